"""Hostile config and input cases, third round: each a one-line `error: ...` (exit 2) before Ray starts, naming the
bad field, or a run whose tables and logs carry no secret. All run `--dry-run` or the plan alone: no Ray."""

from __future__ import annotations

import errno
import functools
import http.server
import shutil
import sys
import threading

import pytest
from conftest import tiny_config, write_yaml

from jobs.audit import main

TOKEN = "SIGq7Zsecret0123456789"


def _dry(tmp_path, raw: dict, capsys, *extra: str) -> tuple[int, str]:
    path = raw if not isinstance(raw, dict) else write_yaml(tmp_path / "audit.yaml", raw)
    code = main(["--config", str(path), "--dry-run", *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _train(tiny_data) -> dict:
    return {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}]}


def _one_line_error(code: int, text: str, *words: str) -> None:
    assert code == 2 and "Traceback" not in text, text
    line = next(x for x in text.splitlines() if x.startswith("error: "))
    for word in words:
        assert word in line, line


# ---------------------------------------------------------------------------------------------------------
# YAML itself


def test_a_duplicate_key_is_refused_naming_the_key_and_its_line(tmp_path, tiny_generator, tiny_data, capsys):
    path = tmp_path / "audit.yaml"
    path.write_text(f"generator: {{torchscript: {tiny_generator}, latent: {{shape: [8], prior: normal}}}}\n"
                    "targets:\n"
                    f"  train: [{{uri: {tiny_data / 'train.parquet'}, image_column: image, id_column: id}}]\n"
                    f"  val: [{tiny_data / 'val' / '*.png'}]\n"
                    f"  train: [{{uri: {tiny_data / 'arrays.parquet'}, array_column: pixels, shape: [8, 8]}}]\n")
    code, text = _dry(tmp_path, path, capsys)
    _one_line_error(code, text, "'train'", "line 5", "twice")


def test_a_duplicate_key_in_a_set_override_is_refused_too(tmp_path, tiny_generator, tiny_data, capsys):
    raw = tiny_config(tiny_generator, targets=_train(tiny_data))
    code, text = _dry(tmp_path, raw, capsys, "--set", "stats={alpha: 0.05, alpha: 0.5}")
    _one_line_error(code, text, "'alpha'", "twice")


def test_yaml_nested_deeper_than_any_config_is_refused_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "audit.yaml"
    path.write_text("generator: " + "[" * 100_000 + "]" * 100_000 + "\n")
    code, text = _dry(tmp_path, path, capsys)
    _one_line_error(code, text, "nested", "deeper")


def test_a_config_that_is_not_utf8_or_has_an_unhashable_key_is_one_line(tmp_path, capsys):
    path = tmp_path / "audit.yaml"
    path.write_bytes(b"generator: {torchscript: caf\xe9.pt}\n")
    code, text = _dry(tmp_path, path, capsys)
    _one_line_error(code, text, "not UTF-8", "0xe9")
    path.write_text("[a, b]: 1\n")
    code, text = _dry(tmp_path, path, capsys)
    _one_line_error(code, text, "unhashable key", "line 1")
    assert len(text.strip().splitlines()) == 1, text


@pytest.mark.parametrize("name", ["val\n", "val\r", "val "])
def test_a_split_name_with_a_trailing_newline_is_refused(tmp_path, tiny_generator, tiny_data, capsys, name):
    raw = tiny_config(tiny_generator, targets={**_train(tiny_data), name: [str(tiny_data / "val" / "*.png")]})
    code, text = _dry(tmp_path, raw, capsys)
    _one_line_error(code, text, "split name")


def test_a_split_name_too_long_for_a_folder_name_is_refused(tmp_path, tiny_generator, tiny_data, capsys):
    raw = tiny_config(tiny_generator, targets={**_train(tiny_data), "v" * 300: [str(tiny_data / "val" / "*.png")]})
    code, text = _dry(tmp_path, raw, capsys)
    _one_line_error(code, text, "split name", "characters")


# ---------------------------------------------------------------------------------------------------------
# Names that become file names


def test_a_run_model_too_long_for_a_file_name_is_refused_at_dry_run(tmp_path, tiny_generator, tiny_data, capsys):
    raw = tiny_config(tiny_generator, targets=_train(tiny_data), run={"model": "m" * 300},
                      output={"path": str(tmp_path / "o"), "history": str(tmp_path / "h")})
    code, text = _dry(tmp_path, raw, capsys)
    _one_line_error(code, text, "run.model", "255")


@pytest.mark.parametrize("field", ["path", "history"])
def test_a_local_output_folder_name_too_long_is_refused_at_dry_run(tmp_path, tiny_generator, tiny_data, capsys, field):
    output = {"path": str(tmp_path / "o"), "history": str(tmp_path / "h"), field: str(tmp_path / ("x" * 300) / "o")}
    raw = tiny_config(tiny_generator, targets=_train(tiny_data), output=output)
    code, text = _dry(tmp_path, raw, capsys)
    _one_line_error(code, text, "output" if field == "path" else "output.history", "300 bytes")


def test_a_name_too_long_is_not_a_transient_storage_error():
    from stats.storage import transient

    assert not transient(OSError(errno.ENAMETOOLONG, "File name too long"))
    assert not transient(OSError(errno.ENOSPC, "No space left on device"))
    assert transient(ConnectionResetError(errno.ECONNRESET, "reset"))


def test_a_failed_history_append_says_rerunning_helps_only_when_it_can(tmp_path, caplog):
    """A permanent failure (a name too long) must not say 'run the same command again to append it'."""
    from types import SimpleNamespace

    from jobs.tracking import record_or_fail

    verdict = SimpleNamespace(label="no evidence")
    outcome = SimpleNamespace(reduction=SimpleNamespace(verdict=verdict), exit_code=0)
    config = SimpleNamespace(history=str(tmp_path / ("h" * 300)), output=str(tmp_path / "missing"),
                             storage=SimpleNamespace(endpoint_url=None), run=None, generator=None)
    with caplog.at_level("ERROR", logger="memaudit"):
        assert record_or_fail(config, outcome, 0) == 1
    assert "again to append" not in caplog.text and "history" in caplog.text


# ---------------------------------------------------------------------------------------------------------
# Sources and the output


def test_a_folder_source_that_is_the_output_is_refused(tmp_path, tiny_generator, tiny_data, capsys):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(tiny_data / "train.parquet", data / "train.parquet")
    raw = tiny_config(tiny_generator, targets={"train": [{"uri": str(data), "format": "parquet",
                                                          "image_column": "image", "id_column": "id"}]},
                      output=str(data))
    code, text = _dry(tmp_path, raw, capsys)
    _one_line_error(code, text, "output:", "targets.train[0].uri")


def test_an_output_inside_a_folder_source_or_a_source_inside_the_output_is_refused(tmp_path, tiny_generator, tiny_data,
                                                                                  capsys):
    src = {"uri": str(tiny_data), "format": "parquet", "image_column": "image", "id_column": "id"}
    for output in (str(tiny_data / "audit"), str(tiny_data.parent)):
        raw = tiny_config(tiny_generator, targets={"train": [src]}, output=output)
        code, text = _dry(tmp_path, raw, capsys)
        _one_line_error(code, text, "output:", "targets.train[0].uri")
    raw = tiny_config(tiny_generator, targets=_train(tiny_data), output=str(tiny_data.parent))  # a file source: fine
    code, text = _dry(tmp_path, raw, capsys)
    assert code == 0, text


def test_a_history_inside_a_source_folder_is_refused(tmp_path, tiny_generator, tiny_data, capsys):
    raw = tiny_config(tiny_generator, targets={"train": [{"uri": str(tiny_data), "format": "parquet",
                                                          "image_column": "image", "id_column": "id"}]},
                      output={"path": str(tmp_path / "o"), "history": str(tiny_data)})
    code, text = _dry(tmp_path, raw, capsys)
    _one_line_error(code, text, "output.history:", "targets.train[0].uri")


@pytest.fixture(scope="module")
def http_val(tiny_data):
    """http://127.0.0.1:<port>/ serving tiny_data/val (the query string is ignored, like a pre-signed URL's)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tiny_data / "val")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _signed(url: str, expires: int = 3600) -> str:
    return (f"{url}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA{TOKEN}%2F20261205%2Fus-east-1%2Fs3"
            f"&X-Amz-Expires={expires}&X-Amz-Signature={TOKEN}")


def test_pre_signed_sources_give_ids_and_sources_without_their_signature(tmp_path, tiny_generator, tiny_data, http_val,
                                                                         capsys):
    from jobs.config import load_config
    from jobs.plan import make_plan
    from jobs.sources import read_items

    val = [_signed(f"{http_val}/v{i:02d}.png") for i in range(3)]
    raw = tiny_config(tiny_generator, targets={**_train(tiny_data), "val": val}, output=str(tmp_path / "o"))
    code, text = _dry(tmp_path, raw, capsys)
    assert code == 0, text
    assert TOKEN not in text and "v02.png" in text
    config = load_config(write_yaml(tmp_path / "audit.yaml", raw))
    plan = make_plan(config)
    assert plan.ids["val"] == [f"{http_val}/v{i:02d}.png" for i in range(3)]  # stable when the URL is signed again
    shard = next(s for s in plan.shards if s.split == "val")
    items = read_items(config.targets.splits["val"][shard.source_index], shard.segments, config.base_dir, None)
    assert items[0].image_id == plan.ids["val"][0] and items[0].data[:4] == b"\x89PNG"  # read with the signature
    again = load_config(write_yaml(tmp_path / "again.yaml", {**raw, "targets": {
        **_train(tiny_data), "val": [_signed(f"{http_val}/v{i:02d}.png", 60) for i in range(3)]}}))
    resigned = make_plan(again)
    assert resigned.ids["val"] == plan.ids["val"]
    assert resigned.fingerprint == plan.fingerprint and [s.id for s in resigned.shards] == [s.id for s in plan.shards]


def test_sources_that_differ_in_a_plain_query_parameter_stay_apart(tmp_path, tiny_generator, tiny_data, http_val):
    from jobs.config import load_config
    from jobs.plan import make_plan
    from jobs.redact import redact_text

    val = [f"{http_val}/v00.png?file=a.png", f"{http_val}/v00.png?file=b.png"]
    raw = tiny_config(tiny_generator, targets={**_train(tiny_data), "val": val}, output=str(tmp_path / "o"))
    plan = make_plan(load_config(write_yaml(tmp_path / "audit.yaml", raw)))
    assert plan.ids["val"] == val and len({redact_text(u) for u in val}) == 2


def test_sources_that_differ_only_in_a_secret_are_refused_naming_both(tmp_path, tiny_generator, tiny_data, http_val,
                                                                      capsys):
    val = [f"{http_val}/v00.png?token=A{TOKEN}", f"{http_val}/v00.png?token=B{TOKEN}"]
    raw = tiny_config(tiny_generator, targets={**_train(tiny_data), "val": val}, output=str(tmp_path / "o"))
    code, text = _dry(tmp_path, raw, capsys)
    _one_line_error(code, text, "targets.val[0]", "targets.val[1]", "v00.png?<redacted>", "query")
    assert TOKEN not in text


# ---------------------------------------------------------------------------------------------------------
# The generator


def test_a_latent_too_large_to_allocate_is_refused_naming_the_field(tmp_path, tiny_generator, tiny_data, capsys):
    raw = tiny_config(tiny_generator, targets=_train(tiny_data))
    raw["generator"]["latent"]["shape"] = [100_000, 100_000]
    code, text = _dry(tmp_path, raw, capsys)
    _one_line_error(code, text, "generator.latent.shape", "GB")


def test_the_latent_memory_check_counts_the_search_state(tiny_generator, tiny_data):
    import dataclasses

    from jobs.config import build_config
    from jobs.errors import ConfigError
    from jobs.preflight import check_latent_memory

    raw = tiny_config(tiny_generator, targets=_train(tiny_data), output="/tmp/o")
    config = build_config(raw, base_dir="/tmp")
    check_latent_memory(config, memory=10**9)  # [8]: nothing to say
    big = dataclasses.replace(config.generator, latent=dataclasses.replace(config.generator.latent, shape=(1_000_000,)))
    check_latent_memory(dataclasses.replace(config, generator=big), memory=10**9)  # 4 MB x 66 copies: fits in 1 GB / 2
    with pytest.raises(ConfigError, match=r"generator.latent.shape: .*one image's search state needs 0.264 GB"):
        check_latent_memory(dataclasses.replace(config, generator=big), memory=4 * 10**8)


def test_classes_on_an_unconditional_generator_blames_classes(tmp_path, tiny_generator, tiny_data, capsys):
    raw = tiny_config(tiny_generator, targets=_train(tiny_data))
    raw["generator"]["classes"] = {"names": ["cat", "dog"], "encoding": "one_hot"}
    code, text = _dry(tmp_path, raw, capsys)
    _one_line_error(code, text, "generator.classes")
    assert "check generator.latent.shape" not in text


FACTORIES = {
    "raises_on_import": ("raise RuntimeError('no CUDA driver found')\n", "RuntimeError: no CUDA driver found"),
    "bad_syntax": ("def make(:\n    pass\n", "SyntaxError"),
    "bad_ctor": ("def make(**kw):\n    raise ValueError('channels must be even')\n", "ValueError: channels must be even"),
}


@pytest.mark.parametrize("module", sorted(FACTORIES))
def test_a_broken_factory_is_a_generator_error_naming_the_factory(tmp_path, tiny_data, capsys, monkeypatch, module):
    source, cause = FACTORIES[module]
    name = f"hostile3_{module}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    raw = tiny_config("unused", targets=_train(tiny_data))
    raw["generator"] = {"factory": f"{name}:make", "latent": {"shape": [8], "prior": "normal"}}
    code, text = _dry(tmp_path, raw, capsys)
    _one_line_error(code, text, "error: generator.factory", f"{name}:make", cause)


def test_a_mask_box_outside_the_audit_image_is_refused_at_dry_run(tmp_path, tiny_generator, tiny_data, capsys):
    raw = tiny_config(tiny_generator, targets=_train(tiny_data))
    raw["recovery"]["operator"] = {"kind": "mask", "boxes": [[20, 20, 100, 100]]}
    code, text = _dry(tmp_path, raw, capsys)
    _one_line_error(code, text, "recovery.operator.boxes[0]", "8x8")


# ---------------------------------------------------------------------------------------------------------
# Checkpoint sweeps


def test_a_sweep_checks_every_checkpoint_before_the_first_audit(tmp_path, tiny_generator, tiny_data, capsys):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    good = open(tiny_generator, "rb").read()
    (folder / "ckpt-1.pt").write_bytes(good)
    (folder / "ckpt-2.pt").write_bytes(good[: len(good) // 2])  # truncated
    (folder / "ckpt-3.pt").write_bytes(good)
    raw = tiny_config(str(folder / "ckpt-*.pt"), targets=_train(tiny_data), output=str(tmp_path / "o"))
    code, text = _dry(tmp_path, raw, capsys)
    _one_line_error(code, text, "generator.torchscript", "ckpt-2", "1 of 3")
    code = main(["--config", str(tmp_path / "audit.yaml")])  # a real run: refused before any audit or Ray
    assert code == 2 and not (tmp_path / "o").exists()


def test_a_checkpoint_name_too_long_for_its_output_folder_is_refused(tmp_path, tiny_generator, tiny_data, capsys):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    shutil.copy(tiny_generator, folder / ("c" * 250 + ".pt"))
    raw = tiny_config(str(folder / "*.pt"), targets=_train(tiny_data), output=str(tmp_path / "o"))
    code, text = _dry(tmp_path, raw, capsys)
    _one_line_error(code, text, "generator.torchscript", "checkpoint=")


def test_a_discriminator_factory_that_raises_on_import_is_named(tmp_path, tiny_generator, tiny_data, capsys, monkeypatch):
    (tmp_path / "hostile3_bad_d.py").write_text("raise RuntimeError('no such backend')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "hostile3_bad_d", raising=False)
    raw = tiny_config(tiny_generator, targets=_train(tiny_data), discriminator={"factory": "hostile3_bad_d:make"})
    code, text = _dry(tmp_path, raw, capsys)
    _one_line_error(code, text, "error: discriminator.factory", "RuntimeError: no such backend")


@pytest.mark.slow
def test_a_run_over_pre_signed_sources_stores_no_signature_anywhere(ray_local, tmp_path, tiny_generator, tiny_data,
                                                                     http_val, capsys):
    """The whole output (parts, ranking, samples, report, run.json) and the log: ids and sources without the signature."""
    val = [_signed(f"{http_val}/v{i:02d}.png") for i in range(6)]
    raw = tiny_config(tiny_generator, targets={**_train(tiny_data), "val": val, "generated": {"count": 4}},
                      output=str(tmp_path / "out"))
    code = main(["--config", str(write_yaml(tmp_path / "audit.yaml", raw))])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert TOKEN not in captured.out + captured.err
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {"report.html", "ranking.parquet", "samples.parquet", "run.json"} <= {p.name for p in files}
    leaked = [str(p) for p in files if TOKEN.encode() in p.read_bytes() or b"X-Amz-Credential" in p.read_bytes()]
    assert not leaked
    import pyarrow.parquet as pq

    ids = pq.read_table(tmp_path / "out" / "results" / "split=val").column("image_id").to_pylist()
    assert sorted(ids) == [f"{http_val}/v{i:02d}.png" for i in range(6)]


def test_split_names_that_differ_only_in_case_are_refused(tmp_path, tiny_generator, tiny_data, capsys):
    raw = tiny_config(tiny_generator, targets={**_train(tiny_data), "val": [str(tiny_data / "val" / "v0*.png")],
                                               "Val": [str(tiny_data / "val" / "v05.png")]})
    code, text = _dry(tmp_path, raw, capsys)
    _one_line_error(code, text, "targets.Val", "'val'", "case")


def test_checkpoints_that_differ_only_in_case_are_refused(tmp_path, tiny_generator, tiny_data, capsys):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    shutil.copy(tiny_generator, folder / "ckpt-A.pt")
    shutil.copy(tiny_generator, folder / "ckpt-a.pt")
    raw = tiny_config(str(folder / "ckpt-*.pt"), targets=_train(tiny_data), output=str(tmp_path / "o"))
    code, text = _dry(tmp_path, raw, capsys)
    _one_line_error(code, text, "generator.torchscript", "case")


@pytest.mark.parametrize("run", [{"model": "g\n2026-12-05 00:00:00 memaudit INFO forged"}, {"tags": {"step": "1\r2"}}])
def test_a_run_name_or_tag_with_a_control_character_is_refused(tmp_path, tiny_generator, tiny_data, capsys, run):
    raw = tiny_config(tiny_generator, targets=_train(tiny_data), run=run)
    code, text = _dry(tmp_path, raw, capsys)
    _one_line_error(code, text, "run.", "control character")
