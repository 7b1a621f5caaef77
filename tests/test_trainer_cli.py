"""`ospo train` / `ospo eval` wiring, error exit codes, and raw-query evaluation end to end;
the benchmarks' TrainConfig options (trainer/training/config_options.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from service.retrieval.embedder import get_embedder
from service.retrieval.index import Retriever
from tests.conftest import write_title_index
from trainer.cli.training import BAD_INPUT, MISSING_RESOURCE, register
from trainer.training.config import TrainConfig
from trainer.training.config_options import (
    add_config_arguments,
    config_from_args,
    config_from_overrides,
)
from trainer.training.evaluate import resolve_adapter

TITLES = {
    "4148063": "Philips Wireless notebook mouse SPM6800/10",
    "1575802": "Philips Meeting microphone LFH9172/00",
    "1659340": "C2G 3ft Cat6 550MHz Snagless Patch Cable Orange networking cable 0.9 m",
    "713212": "Equip Cat.5e SF/UTP Patch Cable, 10m , Green",
    "254421": "HP Inkjet 250-sheet Paper Tray 250 sheets",
}


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


@pytest.fixture(scope="module")
def index_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_title_index(tmp_path_factory.mktemp("index"), TITLES)
    return root


def test_bad_options_exit_2(app: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["train", "--algo", "ppo"]).exit_code == BAD_INPUT
    assert runner.invoke(app, ["train", "--estimator", "magic"]).exit_code == BAD_INPUT
    assert runner.invoke(app, ["train", "--steps", "-1"]).exit_code == BAD_INPUT
    no_warm = ["train", "--steps", "0", "--rs-samples", "0"]  # nothing to train at all
    assert runner.invoke(app, no_warm).exit_code == BAD_INPUT
    assert runner.invoke(app, ["eval", "--policy", str(tmp_path)]).exit_code == BAD_INPUT
    assert runner.invoke(app, ["eval", "--split", "test"]).exit_code == BAD_INPUT


def test_missing_index_exits_3(app: typer.Typer, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", "--index-dir", str(tmp_path)])
    assert result.exit_code == MISSING_RESOURCE


def test_missing_or_unusable_data_exits_2(
    app: typer.Typer, index_root: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    args = ["eval", "--index-dir", str(index_root)]
    assert runner.invoke(app, [*args, "--data", str(tmp_path / "no.csv")]).exit_code == BAD_INPUT
    other = tmp_path / "other.csv"
    other.write_text("query,docid,rating\nlaptop,999,3\n")  # product not in the index
    assert runner.invoke(app, [*args, "--data", str(other)]).exit_code == BAD_INPUT


def test_eval_raw_queries_end_to_end(app: typer.Typer, index_root: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "query,docid,rating\nwireless mouse,4148063,3\nwireless mouse,1575802,0\n"
        "network cable,1659340,3\nnetwork cable,713212,2\n"
    )
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(
        app,
        [
            "eval", "--policy", "raw", "--data", str(labels), "--index-dir", str(index_root),
            "--split", "all", "--pooled", "--json", str(report_path),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["n_queries"] == 2
    raw = report["policies"]["raw"]
    for retriever in ("hybrid", "dense", "lexical", "hybrid_pooled"):
        m = raw[retriever]["ndcg@10"]
        assert 0.0 <= m["lo"] <= m["mean"] <= m["hi"] <= 1.0
    assert raw["dense"]["ndcg@10"]["mean"] > 0.5  # the raw queries already find their products


def test_lexical_arm_and_adapter_resolution(index_root: Path, tmp_path: Path) -> None:
    retriever = Retriever.load_current(index_root, get_embedder())
    (hits,) = retriever.search_ids_many(["patch cable"], 10, "lexical")
    assert set(hits) == {"1659340", "713212"}
    assert retriever.search_ids_many(["zzz"], 5, "lexical") == [[]]
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    assert resolve_adapter(run) == run / "adapter"
    assert resolve_adapter(run / "adapter") == run / "adapter"
    with pytest.raises(FileNotFoundError):
        resolve_adapter(tmp_path)


def test_benchmark_options_are_the_config_fields_with_their_help() -> None:
    unwrapped = lambda prog: argparse.HelpFormatter(prog, width=10_000)  # noqa: E731
    parser = argparse.ArgumentParser(formatter_class=unwrapped)
    parser.add_argument("--seeds", default="0")  # a benchmark's own option
    add_config_arguments(parser, TrainConfig, {"steps": 3}, exclude=("algo",))
    help_text = parser.format_help()
    for f in dataclasses.fields(TrainConfig):
        option = "--" + f.name.replace("_", "-")
        assert (option in help_text) == (f.name != "algo"), option
        assert (f.metadata["help"] in help_text) == (f.name != "algo"), f.name
    assert "(default: 3)" in help_text  # the caller's default is the one shown for --steps

    given = ["--group-size", "4", "--lora-targets", "q_proj, v_proj", "--kl-metric"]
    args = parser.parse_args([*given, "--seeds", "1,2"])
    config = config_from_args(TrainConfig, args, {"steps": 3, "group_size": 2})
    assert (config.group_size, config.steps) == (4, 3)  # given > caller's default > field's
    assert config.lora_targets == ("q_proj", "v_proj") and config.kl_metric
    assert config.lr == TrainConfig().lr and args.seeds == "1,2"
    with pytest.raises(ValueError, match="estimator"):
        config_from_args(TrainConfig, parser.parse_args(["--estimator", "magic"]))


def test_config_from_overrides_rejects_unknown_fields() -> None:
    assert config_from_overrides(TrainConfig, {"lora_targets": "q_proj"}).lora_targets == (
        "q_proj",
    )
    with pytest.raises(ValueError, match="group_sise"):
        config_from_overrides(TrainConfig, {"group_sise": 4})
    with pytest.raises(ValueError, match="stpes"):
        add_config_arguments(argparse.ArgumentParser(), TrainConfig, {"stpes": 3})
