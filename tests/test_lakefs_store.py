"""The lakeFS backend call by call, with the `lakefs_sdk` API patched (as lakeFS tests its own Python client):
branch per round, a transaction per write with Dagster's commit metadata, merge, tag; and the failure paths."""

from pathlib import Path

import lakefs
import polars as pl
import pytest
from lakefs_sdk.exceptions import ApiException

from resources import ArtifactStoreResource
from si_assets.rounds import ChampionRegistry, Promotion
from si_assets.rounds.naming import is_round_key
from si_assets.storage import Checkpoint
from si_assets.storage.lakefs_store import LakeFSArtifactStore, LakeFSError
from tests.fake_lakefs import FakeLakeFS

WHO = {"dagster/run_id": "run-1", "dagster/asset_key": "verified_pairs", "dagster/partition": "round-0001"}


def conflict(args: tuple, kwargs: dict) -> None:
    """An injected failure: lakeFS answering 409."""
    raise ApiException(status=409, reason="Conflict")


@pytest.fixture
def lake(monkeypatch: pytest.MonkeyPatch) -> FakeLakeFS:
    return FakeLakeFS().install(monkeypatch)


@pytest.fixture
def store(lake: FakeLakeFS, tmp_path: Path) -> LakeFSArtifactStore:
    client = lakefs.Client(host="http://lakefs.test", username="AKIAEXAMPLE", password="secret")
    return LakeFSArtifactStore(client, "repo", "main", cache_dir=tmp_path / "cache", branches_partition=is_round_key)


def test_a_round_write_is_one_transaction_on_the_round_branch(lake: FakeLakeFS, store: LakeFSArtifactStore) -> None:
    artifact = store.put(pl.DataFrame({"a": [1]}), "verified_pairs", "round-0001", metadata=WHO)
    names = lake.names()
    assert names[:2] == ["get_branch", "create_branch"]  # round-0001 does not exist yet: made from main
    assert lake.calls[1][1][1].name == "round-0001" and lake.calls[1][1][1].source == "main"
    tx = lake.calls[names.index("create_branch", 2)][1][1]
    assert tx.name.startswith("tx-") and tx.source == "round-0001" and tx.hidden
    assert names[names.index("create_branch", 2) :] == [
        "create_branch",
        "upload_object",
        "upload_object",
        "commit",
        "merge_into_branch",
        "delete_branch",
    ]
    uploads = [args[2] for name, args, _ in lake.calls if name == "upload_object"]
    assert uploads == [
        f"si_store/verified_pairs/round-0001/{artifact.version}/data.parquet",
        "si_store/verified_pairs/round-0001/HEAD",
    ]
    commit = next(args[2] for name, args, _ in lake.calls if name == "commit")
    assert commit.metadata == WHO and "verified_pairs [round-0001]" in commit.message
    merge = next(args for name, args, _ in lake.calls if name == "merge_into_branch")
    assert merge[1] == tx.name and merge[2] == "round-0001"
    assert artifact.commit == lake.branches["round-0001"]["head"]
    assert artifact.uri == f"lakefs://repo/round-0001/si_store/verified_pairs/round-0001/{artifact.version}"
    assert set(lake.branches) == {"main", "round-0001"}  # the ephemeral branch is gone
    assert lake.tree("main") == {}  # nothing of the round reached the base branch

    lake.calls.clear()
    assert store.put(pl.DataFrame({"a": [1]}), "verified_pairs", "round-0001", metadata=WHO) == artifact
    assert "commit" not in lake.names()  # identical content: nothing to commit


def test_an_upload_error_midway_commits_nothing(lake: FakeLakeFS, store: LakeFSArtifactStore, tmp_path: Path) -> None:
    first = store.put(pl.DataFrame({"a": [1]}), "model_card", "round-0001")
    head = lake.branches["round-0001"]["head"]
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (folder / name).write_text(name)
    uploads = []

    def fail_on_second(args, kwargs):
        uploads.append(args[2])
        if len(uploads) == 2:
            raise ApiException(status=503, reason="storage unavailable")

    lake.failures["upload_object"] = fail_on_second
    lake.calls.clear()
    with pytest.raises(ApiException, match="storage unavailable"):
        store.put(Checkpoint(folder), "trained_model", "round-0001")
    assert "commit" not in lake.names() and "merge_into_branch" not in lake.names()
    assert lake.names()[-1] == "delete_branch" and set(lake.branches) == {"main", "round-0001"}
    assert lake.branches["round-0001"]["head"] == head and not lake.branches["round-0001"]["staged"]
    del lake.failures["upload_object"]
    assert store.head("model_card", "round-0001") == first and store.head("trained_model", "round-0001") is None
    assert folder.is_dir()  # a folder the store does not own is never removed


def test_a_merge_conflict_is_a_clear_error_and_leaves_the_branch(lake: FakeLakeFS, store: LakeFSArtifactStore) -> None:
    store.put(pl.DataFrame({"a": [1]}), "pairs", "round-0001")
    head = lake.branches["round-0001"]["head"]
    lake.failures["merge_into_branch"] = conflict
    with pytest.raises(LakeFSError, match="conflicted with another writer"):
        store.put(pl.DataFrame({"a": [2]}), "pairs", "round-0001")
    assert lake.branches["round-0001"]["head"] == head and set(lake.branches) == {"main", "round-0001"}


def _promotion(store: LakeFSArtifactStore, tmp_path: Path) -> Promotion:
    folder = tmp_path / "trained"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"round one weights")
    artifact = store.put(Checkpoint(folder), "trained_model", "round-0001")
    metrics = {"precision": 0.77, "recall": 0.84}
    return Promotion(
        "round-0001", artifact.version, artifact.uri, artifact.content_hash, "base", metrics, metrics, "run-1"
    )


def test_promotion_merges_the_round_into_main_tags_it_and_seeds_the_next_round_from_the_tag(
    lake: FakeLakeFS, store: LakeFSArtifactStore, tmp_path: Path
) -> None:
    candidate = _promotion(store, tmp_path)
    lake.calls.clear()
    registry = ChampionRegistry(store)
    outcome = registry.promote(candidate)
    assert outcome.promoted and outcome.champion.ref == "champion-round-0001"
    names = lake.names()
    merge, tag = lake.calls[names.index("merge_into_branch")], lake.calls[names.index("create_tag")]
    assert names.index("merge_into_branch") < names.index("create_tag") < names.index("commit")  # pointer last
    assert merge[1][1:3] == ("round-0001", "main")
    assert tag[1][1].id == "champion-round-0001"
    assert lake.tags["champion-round-0001"] == tag[1][1].ref  # the merge commit
    assert any(p.endswith("trained_model/round-0001/HEAD") for p in lake.tree("main"))  # the round is in main now

    lake.calls.clear()
    seed = ChampionRegistry(store).champion_before("round-0002")
    checkpoint = ChampionRegistry(store).checkpoint(seed)
    assert (checkpoint.path / "model.safetensors").read_bytes() == b"round one weights"
    listed = [args for name, args, _ in lake.calls if name == "list_objects"]
    assert listed and all(args[1] == "champion-round-0001" for args in listed)  # read through the tag


def test_a_promotion_whose_merge_conflicts_leaves_no_tag_and_no_pointer(
    lake: FakeLakeFS, store: LakeFSArtifactStore, tmp_path: Path
) -> None:
    candidate = _promotion(store, tmp_path)
    lake.failures["merge_into_branch"] = conflict
    with pytest.raises(LakeFSError, match="not promoted"):
        ChampionRegistry(store).promote(candidate)
    assert lake.tags == {} and ChampionRegistry(store).current() is None


def test_the_backend_is_chosen_by_configuration_alone(tmp_path: Path) -> None:
    assert type(ArtifactStoreResource(root=str(tmp_path)).get()).__name__ == "ArtifactStore"
    lakefs_resource = ArtifactStoreResource(
        backend="lakefs",
        lakefs_endpoint="http://lakefs.test",
        lakefs_access_key_id="AKIAEXAMPLE",
        lakefs_secret_access_key="secret",
        lakefs_repository="repo",
        lakefs_base_branch="main",
    )
    store = lakefs_resource.get()
    assert isinstance(store, LakeFSArtifactStore) and store.root_url == "lakefs://repo/main/si_store"
    assert lakefs_resource.commit_url("abc") == "http://lakefs.test/repositories/repo/commits/abc"
    with pytest.raises(ValueError, match="needs lakefs_endpoint"):
        ArtifactStoreResource(backend="lakefs", lakefs_repository="repo").get()


@pytest.mark.slow
def test_a_round_through_dagster_on_lakefs(lake: FakeLakeFS, tmp_path: Path) -> None:
    """The demo graph (small world) with the lakeFS backend: each materialization one commit carrying its run,
    asset and partition; the round on its branch; the champion merged into main and tagged."""
    from resources import ContentAddressedIOManager
    from si_assets.assets.optimization import TRAIN_CODE_VERSION
    from si_assets.definitions import build_definitions, build_resources
    from tests.test_graph import small_round

    store = ArtifactStoreResource(
        backend="lakefs",
        lakefs_endpoint="http://lakefs.test",
        lakefs_access_key_id="AKIAEXAMPLE",
        lakefs_secret_access_key="secret",
        lakefs_repository="repo",
    )
    resources = {**build_resources(str(tmp_path), device="cpu"), "store": store}
    resources["io_manager"] = ContentAddressedIOManager(store=store)
    run, meta = small_round(build_definitions(resources))
    assert meta["path"].startswith("lakefs://repo/round-0001/si_store/trained_model/round-0001/")
    assert meta["lakefs/url"] == f"http://lakefs.test/repositories/repo/commits/{meta['lakefs/commit']}"
    merged = lake.commits[meta["lakefs/commit"]]["metadata"]
    assert merged["dagster/run_id"] == run.result.run_id and merged["dagster/partition"] == "round-0001"
    assert merged["dagster/asset_key"] == "trained_model"
    assert merged["dagster/code_version"] == TRAIN_CODE_VERSION
    assert lake.tags["champion-round-0001"] in lake._ancestors(lake.branches["main"]["head"])
    assert set(lake.branches) == {"main", "round-0001"}  # no ephemeral branch left behind
    champion = ChampionRegistry(store.get()).current()
    assert champion.ref == "champion-round-0001" and champion.version == meta["path"].rsplit("/", 1)[-1]
