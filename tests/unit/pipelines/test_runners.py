"""Runner flags pass through to Beam; the pipeline graph survives serialization (distributed
runners pickle every DoFn); the swing threshold comes from settings unless the CLI says."""

from __future__ import annotations

import pytest
from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PipelineOptions,
    SparkRunnerOptions,
    StandardOptions,
)
from typer.testing import CliRunner

from pipelines import features
from pipelines.run import feature_argv, resolve_max_row_swing
from tests.unit.pipelines.tinylake import DAY1, at, shown_and_clicked, write_lake

FLINK = ["--runner=FlinkRunner", "--flink_master=flink-jobmanager:8081",
         "--environment_type=DOCKER", "--parallelism=4"]
SPARK = ["--runner=SparkRunner", "--spark_master_url=spark://spark-master:7077",
         "--environment_type=DOCKER"]
DATAFLOW = ["--runner=DataflowRunner", "--project=p", "--region=europe-west1",
            "--temp_location=gs://bucket/tmp", "--num_workers=3"]


@pytest.mark.parametrize("flags", [FLINK, SPARK, DATAFLOW], ids=["flink", "spark", "dataflow"])
def test_runner_flags_pass_through_and_parse(flags, tmp_path, monkeypatch) -> None:
    from tests.unit.pipelines import remotefs

    monkeypatch.setenv(remotefs.ROOT_ENV, str(tmp_path))
    args, beam_args = features.parse_args(
        ["--lake", "testfs://bucket/lake", "--out", "testfs://bucket/features", *flags])
    assert beam_args == flags
    assert (args.lake, args.out) == ("testfs://bucket/lake", "testfs://bucket/features")
    assert args.dead_letter_dir.startswith("testfs://bucket/features/dead_letter/features/run=")
    options = PipelineOptions(beam_args)
    assert options.view_as(StandardOptions).runner == flags[0].split("=")[1]
    if flags is FLINK:
        assert options.view_as(FlinkRunnerOptions).flink_master == "flink-jobmanager:8081"
        assert options.view_as(FlinkRunnerOptions).parallelism == 4
    elif flags is SPARK:
        assert options.view_as(SparkRunnerOptions).spark_master_url == "spark://spark-master:7077"
    else:
        gcp = options.view_as(GoogleCloudOptions)
        assert (gcp.project, gcp.region, gcp.temp_location) == (
            "p", "europe-west1", "gs://bucket/tmp")


def test_a_runner_flag_overrides_the_settings_runner(settings) -> None:
    argv = feature_argv(settings, ["--runner=FlinkRunner", "--flink_master=x:8081"])
    assert argv.count("--runner") == 0 and "--runner=FlinkRunner" in argv
    assert feature_argv(settings)[-2:] == ["--runner", "DirectRunner"]


def test_the_whole_graph_serializes_as_a_distributed_runner_needs(tmp_path) -> None:
    """Every DoFn, combiner and side input goes through Beam's pickler into the portable
    pipeline proto and back: nothing holds an open client, a lock or a module-global state."""
    import apache_beam as beam
    from apache_beam.internal import pickler

    lake_dir = tmp_path / "lake"
    write_lake(lake_dir, shown_and_clicked(at(DAY1, 9), 1, 100, "r1", clicked=True))
    import pyarrow as pa

    from recstack import lake

    lake.write_items(pa.table({"item_id": [100], "category": pa.array([1], pa.int32()),
                               "created_at": pa.array([at(DAY1, 0)],
                                                      pa.timestamp("us", tz="UTC"))}), lake_dir)
    args, beam_args = features.parse_args(["--lake", str(lake_dir), "--out",
                                           str(tmp_path / "out"), *FLINK])
    pipeline = beam.Pipeline(runner="DirectRunner", options=PipelineOptions(beam_args))
    features.build(pipeline, args)
    proto = pipeline.to_runner_api()
    payloads = [t.spec.payload for t in proto.components.transforms.values()
                if t.spec.urn == "beam:transform:pardo:v1"]
    assert len(payloads) > 20  # every ParDo of the user, item, label and v2 branches
    again = beam.Pipeline.from_runner_api(proto, pipeline.runner, pipeline.options)
    assert len(again.to_runner_api().components.transforms) == len(proto.components.transforms)
    for dofn in (features.StampDeadLetter("r"), features.WritePartitionFile(
            "gs://b/t", features.USER_FEATURES_SCHEMA, ["user_id"], "rows_x")):
        assert type(pickler.loads(pickler.dumps(dofn))) is type(dofn)


def test_max_row_swing_comes_from_settings_unless_given(settings) -> None:
    s = settings.model_copy(update={
        "pipeline": settings.pipeline.model_copy(update={"max_row_swing": 0.25})})
    assert resolve_max_row_swing(s, "settings") == 0.25
    assert resolve_max_row_swing(s, 0.8) == 0.8  # the CLI flag wins
    assert resolve_max_row_swing(s, 0) is None and resolve_max_row_swing(s, None) is None
    off = s.model_copy(update={"pipeline": s.pipeline.model_copy(update={"max_row_swing": 0})})
    assert resolve_max_row_swing(off, "settings") is None
    with pytest.raises(ValueError):
        resolve_max_row_swing(s, "lots")


def test_max_row_swing_setting_reads_the_environment(monkeypatch) -> None:
    from recstack.settings import Settings

    monkeypatch.setenv("RECSTACK_PIPELINE__MAX_ROW_SWING", "0.3")
    assert Settings().pipeline.max_row_swing == 0.3


def test_cli_passes_runner_flags_and_the_swing_flag_and_reports_dead_letters(monkeypatch):
    import pipelines.run
    from pipelines.cli import app

    calls = []

    def fake_run_all(settings, beam_args=(), backfill=None, max_row_swing="settings"):
        calls.append((list(beam_args), max_row_swing))
        return {"run_id": "r1", "dead_letter": {
            "rows": 3, "by_reason": {"late": 2, "negative_user_id": 1}, "by_step": {},
            "path": "/f/dead_letter/features/run=r1"}}

    monkeypatch.setattr(pipelines.run, "run_all", fake_run_all)
    done = CliRunner().invoke(app, ["pipeline", "--max-row-swing", "0.2", *FLINK])
    assert done.exit_code == 0, done.output
    assert calls[-1] == (FLINK, 0.2)
    assert "3 rows dead-lettered (late 2, negative_user_id 1)" in done.output
    assert "run=r1" in done.output
    done = CliRunner().invoke(app, ["pipeline", "--direct_num_workers=2",
                                    "--direct_running_mode=multi_processing"])
    assert done.exit_code == 0, done.output
    assert calls[-1] == (["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
                         "settings")


def test_the_pipeline_reads_and_writes_remote_uris_through_beam_filesystems(
        tmp_path, monkeypatch) -> None:
    """Lake and output behind a non-local scheme (a stand-in for gs:// or s3://): listing,
    reading, the day partitions, the lists and the dead letters all go through FileSystems."""
    import pyarrow.parquet as pq

    from recstack.schemas import DEAD_LETTER_DIR, POPULAR_FILE, USER_FEATURES_FILE
    from tests.unit.pipelines import remotefs
    from tests.unit.pipelines.tinylake import event

    root = tmp_path / "bucket"
    monkeypatch.setenv(remotefs.ROOT_ENV, str(root))
    write_lake(root / "lake", shown_and_clicked(at(DAY1, 9), 1, 100, "r1", clicked=True)
               + [event(at(DAY1, 10), -1, 100)])
    result = features.run(["--lake", "testfs://lake", "--out", "testfs://features",
                           "--run-id", "remote1", "--direct_running_mode=in_memory"])
    counters = features.counters(result)
    assert counters["rows_user_features"] == 1 and counters["rows_dead_letter"] == 1
    out = root / "features"
    assert pq.read_table(out / USER_FEATURES_FILE).num_rows == 1
    assert pq.read_table(out / POPULAR_FILE).to_pylist()[0]["item_id"] == 100
    dead = pq.read_table(out / DEAD_LETTER_DIR / "features" / "run=remote1").to_pylist()
    assert [d["reason"] for d in dead] == ["negative_user_id"]
    assert dead[0]["source_file"].startswith("testfs://lake/events/date=")
