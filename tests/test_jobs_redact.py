"""Secrets in URLs never reach what memaudit shows or stores."""

import logging

from jobs.redact import REDACTED, install_log_redaction, redact_text, redact_value

SIGNED = "https://bucket.s3.amazonaws.com/models/g.pt?X-Amz-Signature=abc123&X-Amz-Credential=AKIA"


def test_query_string_and_userinfo_are_removed_but_the_location_stays():
    assert redact_text(SIGNED) == f"https://bucket.s3.amazonaws.com/models/g.pt?{REDACTED}"
    assert redact_text("s3://key:secret@bucket/train/*.png") == f"s3://{REDACTED}@bucket/train/*.png"
    assert redact_text("http://minio:9000/?token=t0k#frag") == f"http://minio:9000/?{REDACTED}"


def test_urls_inside_messages_are_redacted_and_plain_text_is_untouched():
    message = f"generator.torchscript: cannot read {SIGNED}: 403 Forbidden"
    assert "abc123" not in redact_text(message) and "AKIA" not in redact_text(message)
    assert redact_text(message).endswith(": 403 Forbidden")
    assert redact_text("data/train.parquet row 3: not an image") == "data/train.parquet row 3: not an image"


def test_redacting_twice_changes_nothing():
    """A sweep's decoded-targets cache stores sources and reasons redacted, and the results redact them again."""
    for text in (SIGNED, "s3://key:secret@bucket/x.png", f"cannot read {SIGNED}: 404", "see http://h/x?a=1#f."):
        once = redact_text(text)
        assert redact_text(once) == once and once.count(REDACTED) == text.count("://")


def test_nested_values_are_redacted():
    info = {"config": {"generator": {"torchscript": SIGNED}, "targets": [{"uri": "s3://u:p@b/x.parquet"}]}, "n": 3}
    clean = redact_value(info)
    assert "abc123" not in str(clean) and "u:p" not in str(clean)
    assert clean["n"] == 3 and clean["config"]["targets"][0]["uri"] == f"s3://{REDACTED}@b/x.parquet"


def test_log_lines_are_redacted(caplog):
    logger = logging.getLogger("memaudit.test_redact")
    install_log_redaction(logger)
    with caplog.at_level(logging.INFO, logger="memaudit.test_redact"):
        logger.info("reading %s", SIGNED)
    assert caplog.records and "abc123" not in caplog.records[-1].getMessage()


# ---------------------------------------------------------------------------------------------------------
# End to end: a generator behind a pre-signed-style URL (a loopback HTTP server ignores the query string).

import functools  # noqa: E402
import http.server  # noqa: E402
import shutil  # noqa: E402
import threading  # noqa: E402

import pytest  # noqa: E402
from conftest import tiny_config, write_yaml  # noqa: E402

TOKEN = "SIGxyz987secret"


@pytest.fixture(scope="module")
def http_models(tmp_path_factory, tiny_generator):
    """http://127.0.0.1:<port>/ serving a folder that holds tiny.pt."""
    root = tmp_path_factory.mktemp("served")
    shutil.copy(tiny_generator, root / "tiny.pt")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # noqa: D401 - keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _audit(tmp_path, tiny_data, generator_url, capsys):
    from jobs.audit import main

    raw = tiny_config(f"{generator_url}?X-Amz-Signature={TOKEN}&X-Amz-Credential=AKIA{TOKEN}", targets={
        "train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}],
        "val": [str(tiny_data / "val" / "*.png")], "generated": {"count": 4, "seed": 0}})
    code = main(["--config", str(write_yaml(tmp_path / "audit.yaml", raw)), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.slow
def test_a_signed_generator_url_never_reaches_run_json_report_or_log(ray_local, http_models, tiny_data, tmp_path, capsys):
    code, logged = _audit(tmp_path, tiny_data, f"{http_models}/tiny.pt", capsys)
    assert code == 0, logged
    for name in ("run.json", "report.html"):
        text = (tmp_path / "out" / name).read_text()
        assert TOKEN not in text, name
    assert f"{http_models}/tiny.pt?{REDACTED}" in (tmp_path / "out" / "run.json").read_text()  # the location stays
    assert TOKEN not in logged


def test_a_signed_url_in_an_error_is_redacted(http_models, tiny_data, tmp_path, capsys):
    code, logged = _audit(tmp_path, tiny_data, f"{http_models}/missing.pt", capsys)
    assert code == 2 and "missing.pt" in logged and TOKEN not in logged


def test_a_query_string_is_not_a_glob_on_http_but_a_question_mark_is_one_elsewhere():
    from stats.storage import is_glob

    assert not is_glob(f"https://host/models/g.pt?X-Amz-Signature={TOKEN}")
    assert is_glob("https://host/models/*.pt?sig=1") and is_glob("data/img-??.png") and is_glob("s3://b/[ab].pt")


def test_parameters_that_name_data_stay_and_secret_ones_go():
    from jobs.redact import strip_secrets

    assert redact_text("http://h/get?file=a.png") == "http://h/get?file=a.png"
    assert redact_text("http://h/get?file=a.png&sig=xyz") == f"http://h/get?file=a.png&{REDACTED}"
    assert redact_text("http://h/x?id=AbCdEf0123456789xyz") == f"http://h/x?{REDACTED}"  # a token-like value, any name
    for name in ("X-Amz-Signature", "X-Goog-Credential", "token", "access_token", "api_key", "sv", "se", "Expires"):
        assert redact_text(f"http://h/x.png?{name}=v") == f"http://h/x.png?{REDACTED}", name
    assert strip_secrets("https://u:p@h/x.png?X-Amz-Signature=abc&file=a.png#frag") == "https://h/x.png?file=a.png"
    assert strip_secrets("data/img?.png") == "data/img?.png"  # a local glob is no URL
