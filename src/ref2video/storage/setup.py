"""The result and upload storages (and the `video_url` signer) that settings choose."""

from __future__ import annotations

from ..config import Settings
from .base import Storage
from .local import LocalStorage
from .signing import UrlSigner

__all__ = ["storages_from_settings"]


def storages_from_settings(settings: Settings, secret: str) -> tuple[Storage, Storage, UrlSigner]:
    """(results, uploads, signer). Local folders by default; with `storage = "s3"` both live in
    the bucket (`<s3_prefix>results/`, `<s3_prefix>uploads/`), uploads are downloaded into the
    process's scratch folder when a task needs them, and `video_url` is a presigned link to the
    bucket unless `s3_private` says that only the API may read it."""
    if settings.storage != "s3":
        assert settings.results_dir is not None
        return (LocalStorage(settings.results_dir), LocalStorage(settings.data_dir / "uploads"),
                UrlSigner(secret, settings.url_ttl_seconds))
    from .s3 import PresignedLinks, S3Storage, make_client

    client = make_client(endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
                         access_key_id=settings.s3_access_key_id, secret_access_key=settings.s3_secret_access_key,
                         connect_timeout=settings.s3_connect_timeout, read_timeout=settings.s3_read_timeout,
                         max_attempts=settings.s3_max_attempts)
    prefix = settings.s3_prefix.strip("/") + "/" if settings.s3_prefix.strip("/") else ""
    cache = settings.scratch_dir / "s3"
    results = S3Storage(client, settings.s3_bucket, prefix=prefix + "results/", cache_dir=cache / "results")
    uploads = S3Storage(client, settings.s3_bucket, prefix=prefix + "uploads/", cache_dir=cache / "uploads",
                        cache_max_bytes=max(settings.cache_max_bytes, 256 << 20))
    signer = (UrlSigner(secret, settings.url_ttl_seconds) if settings.s3_private
              else PresignedLinks(secret, settings.url_ttl_seconds, results))
    return results, uploads, signer
