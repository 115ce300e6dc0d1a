"""The whole demo round against a real lakeFS: runs only when a server is configured (CI runs none). Start one
with `docker run --pull always -p 8000:8000 treeverse/lakefs:latest run --quickstart`,
then see docs/operations.md ("lakeFS") for the variables."""

import os
import uuid

import lakefs
import pytest

from si_assets.definitions import build_definitions, build_resources
from si_assets.rounds import ChampionRegistry
from tests.test_graph import small_round

NEEDED = ("LAKECTL_SERVER_ENDPOINT_URL", "LAKECTL_CREDENTIALS_ACCESS_KEY_ID", "LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY")

pytestmark = pytest.mark.skipif(
    not all(os.environ.get(v) for v in NEEDED),
    reason="no lakeFS server: set LAKECTL_SERVER_ENDPOINT_URL, LAKECTL_CREDENTIALS_ACCESS_KEY_ID and "
    "LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY (and SI_LAKEFS_REPOSITORY, default 'quickstart') to run it",
)


@pytest.mark.slow
def test_demo_round_on_lakefs(monkeypatch: pytest.MonkeyPatch) -> None:
    repository = os.environ.get("SI_LAKEFS_REPOSITORY", "quickstart")
    monkeypatch.setenv("SI_LAKEFS_REPOSITORY", repository)
    monkeypatch.setenv("SI_STORE_BACKEND", "lakefs")
    monkeypatch.setenv("SI_LAKEFS_PREFIX", f"si_store_test_{uuid.uuid4().hex[:8]}")  # a clean champion history
    resources = build_resources(device="cpu")
    run, metadata = small_round(build_definitions(resources))
    commit = metadata["lakefs/commit"]
    assert metadata["path"].startswith(f"lakefs://{repository}/round-0001/")
    client = lakefs.Client(host=os.environ[NEEDED[0]], username=os.environ[NEEDED[1]], password=os.environ[NEEDED[2]])
    repo = lakefs.Repository(repository, client=client)
    assert repo.commit(commit).get_commit().metadata["dagster/run_id"] == run.result.run_id
    tag = repo.tag("champion-round-0001").get_commit()
    assert tag.id == repo.branch("main").get_commit().id  # the champion's merge into main, tagged
    champion = ChampionRegistry(resources["store"].get()).current()
    assert champion is not None and champion.ref == "champion-round-0001"
