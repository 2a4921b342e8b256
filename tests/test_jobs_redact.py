"""Secrets in URLs never reach what memaudit shows or stores (issue 15)."""

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
