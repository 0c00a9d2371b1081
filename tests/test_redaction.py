"""homogen.redaction.redact: the one scrubber of credentials in URLs, for any text."""

import pytest

from homogen.redaction import redact


@pytest.mark.parametrize(
    "text, expected",
    [
        ("s3://AKIA:s3cr3t@bucket/ds.zarr", "s3://bucket/ds.zarr"),
        ("https://user:pw@host:5000/path?x=1", "https://host:5000/path"),
        ("https://tok123@host/", "https://host/"),
        ("postgresql://u:p@db:5432/mlflow", "postgresql://db:5432/mlflow"),
        ("https://b.s3.amazonaws.com/k?X-Amz-Signature=abc&part=2", "https://b.s3.amazonaws.com/k"),
        ("http://[::1]:5000/x?token=zzz", "http://[::1]:5000/x"),
        ("failed for http://a:b@h:1/x and gs://k:v@bkt/y", "failed for http://h:1/x and gs://bkt/y"),
        ("sqlite:////data/mlflow.db?mode=ro", "sqlite:////data/mlflow.db"),
        ("s3://AKIAKEY:s3cr3t@bucket/coco", "s3://bucket/coco"),
        ("https://user:pw@example.org:8443/data/coco?X-Amz-Signature=abc", "https://example.org:8443/data/coco"),
        ("gs://bucket/coco", "gs://bucket/coco"),
        ("/data/coco", "/data/coco"),
        ("C:\\data\\coco", "C:\\data\\coco"),
    ],
)
def test_credentials_queries_and_fragments_leave_every_url_in_a_text(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text", ["/data/user@host/ds.zarr", "C:\\data\\coco", "sqlite:////data/mlflow.db", "no url here"]
)
def test_paths_and_plain_text_come_back_unchanged(text):
    assert redact(text) == text


def test_non_strings_come_back_unchanged():
    assert redact(3) == 3 and redact(None) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("quarantined /c/train2017/a.jpg?X-Amz-Signature=abc&X-Amz-Date=1", "quarantined /c/train2017/a.jpg"),
        ("b.png?sig=xyz: missing", "b.png missing"),  # a query runs to the next space
        ("/c/a.jpg?token=t0k3n and /c/b.jpg?GoogleAccessId=x&Signature=s", "/c/a.jpg and /c/b.jpg"),
        ("is it?", "is it?"),
        ("/c/what?.jpg", "/c/what?.jpg"),
    ],
)
def test_a_signed_query_without_a_scheme_is_dropped_too(text, expected):
    assert redact(text) == expected
