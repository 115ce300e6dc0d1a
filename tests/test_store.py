"""The store contract: every test taking `store` runs on the folder store and on the lakeFS store (over the
in-memory lakeFS of `tests/fake_lakefs.py`), so both backends keep the same promises."""

from pathlib import Path

import dagster as dg
import lakefs
import polars as pl
import pytest

from resources import ArtifactStoreResource, ContentAddressedIOManager
from si_assets.assets.common import versioned
from si_assets.rounds.naming import is_round_key
from si_assets.storage import ArtifactStore, Checkpoint, content_hash
from si_assets.storage.lakefs_store import LakeFSArtifactStore
from tests.fake_lakefs import FakeLakeFS


@pytest.fixture(params=["local", "lakefs"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if request.param == "local":
        return ArtifactStore(tmp_path / "store")
    FakeLakeFS().install(monkeypatch)
    client = lakefs.Client(host="http://lakefs.test", username="AKIAEXAMPLE", password="secret")
    return LakeFSArtifactStore(client, "repo", "main", cache_dir=tmp_path / "cache", branches_partition=is_round_key)


def _checkpoint(store: ArtifactStore, payload: bytes) -> Checkpoint:
    path = store.staging_dir()
    (path / "model.safetensors").write_bytes(payload)
    (path / "config.json").write_text("{}")
    return Checkpoint(path)


def test_two_versions_both_readable_never_overwritten(store) -> None:
    v1 = store.put(pl.DataFrame({"a": [1, 2]}), "pairs")
    v2 = store.put(pl.DataFrame({"a": [3]}), "pairs")
    assert v1.uri != v2.uri
    assert store.read_table(v1)["a"].to_list() == [1, 2]
    assert store.read_table(v2)["a"].to_list() == [3]
    assert store.versions("pairs") == sorted([v1.version, v2.version])
    assert store.head("pairs") == v2


def test_same_content_same_path_and_hash_is_the_data_version(store) -> None:
    df = pl.DataFrame({"x": ["a", "b"], "y": [1.0, 2.0]})
    a = store.put(df, "t", "round-0001")
    b = store.put(df.clone(), "t", "round-0001")
    assert a == b
    assert a.content_hash == content_hash(df)
    assert store.versions("t", "round-0001") == [a.version]


def test_checkpoint_from_staging_is_moved_a_foreign_folder_is_copied(store) -> None:
    staged = _checkpoint(store, b"weights-1")
    art = store.put(staged, "model")
    assert not staged.path.exists()
    loaded = store.load(art)
    assert (loaded.path / "model.safetensors").read_bytes() == b"weights-1"
    assert loaded.version == art.version  # a loaded checkpoint names its version, whatever the backend
    # Storing an existing version under another asset copies it: the source stays intact.
    again = store.put(loaded, "seed_checkpoint")
    assert loaded.path.exists()
    assert again.content_hash == art.content_hash and again.uri != art.uri


def test_checkpoint_hash_depends_on_names_and_bytes(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    one = content_hash(_checkpoint(store, b"w"))
    two = content_hash(_checkpoint(store, b"w"))
    three = content_hash(_checkpoint(store, b"W"))
    assert one == two != three


def test_paths_escaping_the_root_are_refused(store) -> None:
    with pytest.raises(ValueError, match="escapes"):
        store.put(pl.DataFrame({"a": [1]}), "../outside")
    with pytest.raises(TypeError):
        store.put({"not": "a table"}, "x")  # type: ignore[arg-type]


def test_pointers_and_parts_round_trip(store) -> None:
    assert store.read_pointer("champion") is None
    store.write_pointer("champion", {"version": "abc"})
    store.write_pointer("champion", {"version": "def"})
    assert store.read_pointer("champion") == {"version": "def"}
    assert store.read_part("_chunks/step/key", "000000-x") is None
    store.write_part("_chunks/step/key", "000000-x", pl.DataFrame({"a": [1]}))
    assert store.read_part("_chunks/step/key", "000000-x")["a"].to_list() == [1]


def test_partitions_are_kept_apart_and_champions_pinned(store) -> None:
    one = store.put(pl.DataFrame({"r": [1]}), "pairs", "round-0001")
    two = store.put(pl.DataFrame({"r": [2]}), "pairs", "round-0002")
    assert store.head("pairs", "round-0001") == one and store.head("pairs", "round-0002") == two
    assert store.versions("pairs", "round-0001") == [one.version] and store.head("pairs") is None
    staged = _checkpoint(store, b"champion weights")
    model = store.put(staged, "trained_model", "round-0001")
    ref = store.mark_champion("round-0001")
    pinned = store.artifact_at(model, ref)
    assert (store.local_checkpoint(pinned).path / "model.safetensors").read_bytes() == b"champion weights"


def test_io_manager_versions_each_materialization_and_reads_what_dagster_recorded(tmp_path: Path) -> None:
    calls = {"n": 0}

    @dg.asset
    def table() -> dg.Output[pl.DataFrame]:
        calls["n"] += 1
        return versioned(pl.DataFrame({"n": [calls["n"]]}))

    @dg.asset
    def doubled(table: pl.DataFrame) -> pl.DataFrame:
        return table.with_columns(pl.col("n") * 2)

    instance = dg.DagsterInstance.ephemeral()
    resources = {"io_manager": ContentAddressedIOManager(store=ArtifactStoreResource(root=str(tmp_path)))}
    for _ in range(2):
        assert dg.materialize([table, doubled], instance=instance, resources=resources).success

    events = instance.fetch_materializations(dg.AssetKey("table"), limit=10).records
    assert len(events) == 2
    paths = {e.asset_materialization.metadata["path"].value for e in events}
    assert len(paths) == 2 and all(Path(p, "data.parquet").exists() for p in paths)
    latest = events[0].asset_materialization
    assert latest.tags["dagster/data_version"] == latest.metadata["content_hash"].value[:16]
    assert ArtifactStore(tmp_path).read_table(ArtifactStore(tmp_path).head("doubled"))["n"].to_list() == [4]


def test_memoised_checkpoint_builds_once_per_key(tmp_path: Path) -> None:
    from si_assets.storage.memo import config_key, memoised_checkpoint

    store = ArtifactStore(tmp_path)
    builds = []

    def build() -> tuple[Checkpoint, dict]:
        builds.append(1)
        return _checkpoint(store, b"trained"), {"steps": 3}

    key = config_key("world-hash", "code-1")
    first, meta1, reused1 = memoised_checkpoint(store, "seed", key, build)
    second, meta2, reused2 = memoised_checkpoint(store, "seed", key, build)
    assert (reused1, reused2) == (False, True) and len(builds) == 1
    assert meta1 == meta2 == {"steps": 3}
    assert content_hash(first) == content_hash(second)
    assert first.path != second.path  # each caller gets its own staging copy to hand to the store
    _, _, reused3 = memoised_checkpoint(store, "seed", config_key("world-hash", "code-2"), build)
    assert reused3 is False and len(builds) == 2
