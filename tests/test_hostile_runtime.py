"""Runtime hostile cases: a generator that fails on part of its latent space or only on some batches, unfinished or
custom-named outputs in compare and history, unreadable history files, 16-bit and oversized images."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recovery import (GeneratorSpec, ImageError, LatentSpec, RecoveryError, RecoverySettings, load_generator, recover,
                      sample_generated, to_target)
from stats import reduce
from stats.history.runs import append, history_row, read_history
from stats.history.cli import compare_main, history_main
from tests._outputs import errors, write_output
from tests._tables import table_of


def test_rejected_generated_images_count_against_the_generated_gate():
    # 10 generated images: 4 recovered exactly, 6 rejected because G returned NaN for their latents.
    rng = np.random.default_rng(0)
    table = table_of(train=rng.lognormal(-3, 0.5, 100), val=rng.lognormal(-3, 0.5, 100), generated=np.full(4, 1e-6))
    rejects = pa.table({"image_id": [f"g-{i}" for i in range(6)], "split": ["generated"] * 6,
                        "stage": ["recover"] * 6, "reason": ["generator returned NaN"] * 6})
    verdict = reduce(table, rejects).verdict
    assert verdict.label == "inconclusive"
    assert verdict.numbers["generated_success_rate"] == pytest.approx(0.4)
    assert "4 of 10" in verdict.sentence and "6 rejected" in verdict.sentence


def renamed(table: pa.Table, names: dict[str, str]) -> pa.Table:
    split = [names.get(s, s) for s in table.column("split").to_pylist()]
    ids = [i.replace(old, new, 1) for i, old in zip(table.column("image_id").to_pylist(), table.column("split").to_pylist())
           for new in [names.get(old, old)]]
    return table.set_column(0, "image_id", pa.array(ids)).set_column(1, "split", pa.array(split))


CUSTOM = {"pairs": [["member", "heldout"]]}
NAMES = {"train": "member", "val": "heldout"}


@pytest.fixture
def custom_runs(tmp_path):
    """Two runs with custom split names: A clean, B with its member images recovered far better than heldout."""
    a = write_output(str(tmp_path / "a"), renamed(errors(0.0, 1), NAMES), finished="2026-12-01T02:00:00+00:00",
                     run={"model": "glo"}, stats_config=CUSTOM)
    b = write_output(str(tmp_path / "b"), renamed(errors(1.5, 1), NAMES), finished="2026-12-02T02:00:00+00:00",
                     run={"model": "glo"}, stats_config=CUSTOM)
    return a, b


def test_compare_reads_the_configured_pair_names(custom_runs, capsys):
    flagged_b = pq.read_table(f"{custom_runs[1]}/ranking.parquet").column("flagged").to_pylist().count(True)
    assert flagged_b > 10
    assert compare_main(list(custom_runs)) == 0
    text = capsys.readouterr().out
    assert f"member images flagged in B and not in A: {flagged_b}" in text
    assert "train images flagged" not in text


def test_history_shows_n_and_mre_of_the_configured_pair(custom_runs, tmp_path, capsys):
    history = str(tmp_path / "history")
    for out in custom_runs:
        append(history_row(out), history)
    assert history_main([history]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("2026-12-0")]
    assert len(lines) == 2 and all("40/40" in line for line in lines), lines
    assert "n member/heldout" in out and "MRE member" in out and "MRE heldout" in out and "MRE train" not in out


def test_compare_refuses_an_unfinished_output_as_report_does(tmp_path, capsys):
    a = write_output(str(tmp_path / "a"), errors(0.0, 1), finished="2026-12-01T02:00:00+00:00")
    b = write_output(str(tmp_path / "b"), errors(0.0, 2, n=2).slice(0, 2), finished="2026-12-02T02:00:00+00:00")
    info = json.loads((tmp_path / "b" / "run.json").read_text())
    info.update(status="partial", plan={"images": {"train": 6, "val": 6, "generated": 8}})
    info.pop("verdict")
    (tmp_path / "b" / "run.json").write_text(json.dumps(info))
    assert compare_main([a, b]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and str(tmp_path / "b") in err and "incomplete" in err


@pytest.mark.parametrize("bad", ["zero-byte", "foreign-schema", "not-parquet"])
def test_one_bad_history_file_is_named_and_the_other_runs_still_show(tmp_path, capsys, bad):
    history = tmp_path / "history"
    for i, shift in enumerate((1.5, 0.0)):
        out = write_output(str(tmp_path / f"run{i}"), errors(shift, i), finished=f"2026-12-0{i + 1}T02:00:00+00:00",
                           run={"model": "glo"})
        append(history_row(out), str(history))
    broken = history / "model=glo" / "run-0badf11e0badf11e.parquet"
    if bad == "zero-byte":
        broken.write_bytes(b"")
    elif bad == "foreign-schema":
        pq.write_table(pa.table({"x": [1, 2], "run_id": [3, 4]}), broken)
    else:
        broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.warns(UserWarning, match="run-0badf11e0badf11e.parquet"):
        table = read_history(str(history))
    assert table.num_rows == 2
    assert history_main([str(history)]) == 0
    captured = capsys.readouterr()
    assert "model glo: 2 runs" in captured.out
    assert "run-0badf11e0badf11e.parquet" in captured.err and "skipped" in captured.err


def png16(arr: np.ndarray, *, sub_filter: bool = True, size: tuple[int, int] | None = None) -> bytes:
    """A 16-bit PNG (gray, gray+alpha, RGB or RGBA by the channel count), each row Sub-filtered; Pillow cannot
    write one. ``size`` overrides the header's width x height (a header that claims more than the data holds)."""
    h, w, c = arr.shape
    rows = []
    for y in range(h):
        raw = np.frombuffer(arr[y].astype(">u2").tobytes(), np.uint8).astype(np.int32)
        if sub_filter:  # each byte minus the byte one pixel to its left, mod 256: decoders must undo it per pixel
            raw[2 * c:] = (raw[2 * c:] - raw[:-2 * c]) % 256
        rows.append(bytes([1 if sub_filter else 0]) + raw.astype(np.uint8).tobytes())
    color = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    width, height = size or (w, h)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_a_16_bit_png_keeps_its_16_bits(channels):
    rng = np.random.default_rng(channels)
    arr = rng.integers(0, 65536, (6, 7, channels), dtype=np.uint16)
    gray = channels in (1, 2)
    target = to_target(png16(arr), shape=(1 if gray else 3, 6, 7), output_range=(0.0, 1.0))  # [C, 6, 7]
    expected = arr[..., :1] if gray else arr[..., :3]  # alpha dropped
    np.testing.assert_allclose(target.permute(1, 2, 0).numpy(), expected / 65535.0, rtol=0, atol=1e-7)


def test_an_image_too_large_to_decode_is_refused_from_its_header():
    # 15000 x 15000 RGB at 16 bits: under the pixel limit, but 1.35 GB decoded. The data is not even there:
    # the header alone must decide, before any decoding.
    data = png16(np.zeros((2, 2, 3), np.uint16), size=(15000, 15000))
    with pytest.raises(ImageError, match=r"15000x15000.*3 channels of 16 bits.*1\.35 GB.*limit"):
        to_target(data, shape=(3, 64, 64))


def faulty(fault: str) -> GeneratorSpec:
    return GeneratorSpec(factory="tests.faulty_models:BatchDependent", kwargs={"fault": fault},
                         latent=LatentSpec((8,), "normal"), output_range=(-1.0, 1.0))


@pytest.mark.parametrize("fault, shown", [("shape", r"\[1, 4, 4\].*\[1, 8, 8\]"), ("channels", r"\[3, 8, 8\].*\[1, 8, 8\]"),
                                          ("dtype", "float16.*float32")])
def test_a_generator_that_changes_its_output_on_larger_batches_stops_the_search(fault, shown):
    g = load_generator(faulty(fault), device="cpu")  # the load check's batches of 3 and 1 pass
    targets = torch.zeros(8, 1, 8, 8)
    settings = RecoverySettings(protocol="paper", iterations=2, batch_size=8)
    with pytest.raises(RecoveryError, match=rf"factory tests.faulty_models:BatchDependent.*batch of 8.*{shown}"):
        recover(g, targets, [f"i{k}" for k in range(8)], settings=settings)
    with pytest.raises(RecoveryError, match=rf"batch of 8.*{shown}"):
        sample_generated(g, [f"g{k}" for k in range(8)], seed=0, settings=settings)


def test_generated_images_outside_output_range_on_larger_batches_are_refused():
    g = load_generator(faulty("range"), device="cpu")
    settings = RecoverySettings(protocol="paper", iterations=2, batch_size=8)
    with pytest.raises(RecoveryError, match=r"batch of 8.*spans \[-?\d.*outside .*output_range \[-1, 1\]"):
        sample_generated(g, [f"g{k}" for k in range(8)], seed=0, settings=settings)
    sample_generated(g, ["g0", "g1"], seed=0, settings=settings)  # small batches are fine


def test_a_generator_that_turns_infinite_on_larger_batches_leaves_failures_not_recoveries():
    g = load_generator(faulty("inf"), device="cpu")
    settings = RecoverySettings(protocol="paper", iterations=2, batch_size=8)
    _, images = sample_generated(g, ["g0", "g1"], seed=0, settings=settings)  # [2, 1, 8, 8], finite at batch 2
    table = recover(g, images.repeat(4, 1, 1, 1), [f"i{k}" for k in range(8)], settings=settings)
    assert table.column("failure").null_count == 0  # each image a failure (a rejects row in the job), none "recovered"
    _, inf = sample_generated(g, [f"g{k}" for k in range(8)], seed=0, settings=settings)  # non-finite: per image
    assert not torch.isfinite(inf).any()


def test_a_generator_that_raises_on_larger_batches_is_searched_image_by_image_and_says_so(caplog):
    g = load_generator(faulty("raise"), device="cpu")
    settings = RecoverySettings(protocol="paper", iterations=2, batch_size=8)
    _, images = sample_generated(g, ["g0", "g1"], seed=0, settings=settings)
    with caplog.at_level("WARNING", logger="memaudit.recovery"):
        table = recover(g, images.repeat(4, 1, 1, 1), [f"i{k}" for k in range(8)], settings=settings)
    assert table.column("failure").null_count == 8  # every image searched, one at a time
    warnings = [r.getMessage() for r in caplog.records if "retrying image by image" in r.getMessage()]
    assert len(warnings) == 1 and "BatchDependent" in warnings[0] and "cannot run a batch of" in warnings[0]
