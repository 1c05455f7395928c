"""Where a path points: a local file, an object-store or web URL (s3://, gs://, az://, https://) or a
GDAL virtual path (/vsis3/...), and how each library reaches it.

Credentials are never handled here: GDAL, fsspec/s3fs and boto read them from each library's standard
environment and config files. `redact` removes any that a URL or message carries before it is shown.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

# Object stores and web servers, with GDAL's virtual file system for each.
GDAL_PREFIXES = {
    "s3": "/vsis3/",
    "gs": "/vsigs/",
    "gcs": "/vsigs/",
    "az": "/vsiaz/",
    "abfs": "/vsiaz/",
    "http": "/vsicurl/",
    "https": "/vsicurl/",
}


def is_uri(path: str | os.PathLike[str]) -> bool:
    """True for URIs and GDAL virtual paths: names no local stat or resolve applies to."""
    text = os.fspath(path)
    return "://" in text or text.startswith("/vsi")


def scheme(path: str | os.PathLike[str]) -> str:
    """'s3', 'https', ... for a URL; '' for a local path or a GDAL virtual path."""
    text = os.fspath(path)
    return text.split("://", 1)[0].lower() if "://" in text else ""


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True for object-store and web URLs that fsspec can list and zarr can write (not /vsi paths)."""
    return scheme(path) in GDAL_PREFIXES


def absolute(path: str | os.PathLike[str]) -> str:
    """Local paths made absolute (workers and records need paths that work anywhere); URIs kept as given."""
    text = os.fspath(path)
    return text if is_uri(text) else str(Path(text).expanduser().resolve())


def gdal_path(path: str | os.PathLike[str]) -> str:
    """The name GDAL opens: s3://b/k -> /vsis3/b/k, https://h/p -> /vsicurl/https://h/p; others unchanged."""
    text = os.fspath(path)
    kind = scheme(text)
    if kind in ("http", "https"):
        return GDAL_PREFIXES[kind] + text
    if kind in GDAL_PREFIXES:
        return GDAL_PREFIXES[kind] + text.split("://", 1)[1]
    return text


_VSI_SCHEMES = {"/vsis3/": "s3", "/vsigs/": "gs", "/vsiaz/": "az", "/vsiadls/": "az"}


def url_of(path: str | os.PathLike[str]) -> str:
    """The URL a GDAL virtual path names (inverse of `gdal_path`): /vsis3/b/k -> s3://b/k,
    /vsicurl/https://h/p -> https://h/p; anything else unchanged. One object, one name."""
    text = os.fspath(path)
    for prefix, kind in _VSI_SCHEMES.items():
        if text.startswith(prefix):
            return f"{kind}://{text[len(prefix) :]}"
    if text.startswith("/vsicurl/") and "://" in text:
        return text[len("/vsicurl/") :]
    return text


def object_identity(path: str | os.PathLike[str]) -> dict[str, object]:
    """What identifies the current version of a remote object: its size and ETag (or last-modified time),
    from one HEAD request through fsspec; {} for local paths and virtual paths that name no object."""
    url = url_of(path)
    if not is_remote(url):
        return {}
    import fsspec

    fs, key = fsspec.core.url_to_fs(url)
    info = fs.info(key)
    ident: dict[str, object] = {"size": int(info["size"])} if info.get("size") is not None else {}
    lower = {str(k).lower(): v for k, v in info.items()}
    for name in ("etag", "last_modified", "lastmodified", "mtime", "last-modified"):
        value = lower.get(name)
        if value is not None:
            ident["etag" if name == "etag" else "modified"] = str(value).strip('"')
            if name == "etag":
                break
    return ident


def gdal_cloud_options(environ: os._Environ[str] | dict[str, str] | None = None) -> dict[str, str]:
    """GDAL settings for reading rasters from object storage with few requests.

    No directory listing on open, consecutive ranges merged, HTTP/2 multiplexing, a bounded in-memory
    cache of fetched ranges. An S3-compatible endpoint given the way boto3 and s3fs take it
    (AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL) is passed on in GDAL's own terms, unless GDAL's own
    AWS_S3_ENDPOINT is set. Values already in the environment win.
    """
    env = os.environ if environ is None else environ
    options = {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        "GDAL_HTTP_MULTIPLEX": "YES",
        "GDAL_HTTP_MAX_RETRY": "3",
        "GDAL_HTTP_RETRY_DELAY": "1",
        "VSI_CACHE": "TRUE",
        "VSI_CACHE_SIZE": str(64 * 2**20),
        "CPL_VSIL_CURL_CACHE_SIZE": str(128 * 2**20),
    }
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint and "AWS_S3_ENDPOINT" not in env:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["AWS_S3_ENDPOINT"] = parts.netloc + parts.path.rstrip("/")
        options["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
        options["AWS_VIRTUAL_HOSTING"] = "FALSE"  # custom endpoints (MinIO, Ceph, moto) serve path-style
    return {k: v for k, v in options.items() if k not in env}


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")
_SECRET_QUERY = re.compile(
    r"(?i)(?P<key>[?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|signature|sig|token|"
    r"access_token|awsaccesskeyid|key|code|se|sp|sv|skoid|sktid)=)[^&#\s]*"
)
_SECRET_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "GS_SECRET_ACCESS_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS_JSON",
)


def redact(text: str) -> str:
    """`text` without credentials: user:password@ in URLs, signed-URL query secrets, and the values of
    the standard credential variables wherever they appear."""
    text = _USERINFO.sub(lambda m: m.group("scheme") + "***@", str(text))
    text = _SECRET_QUERY.sub(lambda m: m.group("key") + "***", text)
    for var in _SECRET_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 8:  # real keys are long; a short toy value would mangle ordinary words
            text = text.replace(value, "***")
    return text


# What a Ray worker on another node needs to reach the same object store as the driver: endpoints,
# regions and credentials in each library's standard variables (boto3/s3fs, GDAL, gcsfs, adlfs). Files
# they might name (AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS) are not passed: they exist on this machine only.
CLOUD_ENV_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_NO_SIGN_REQUEST",
    "AWS_S3_ENDPOINT",
    "AWS_HTTPS",
    "AWS_VIRTUAL_HOSTING",
    "GS_ACCESS_KEY_ID",
    "GS_SECRET_ACCESS_KEY",
    "GOOGLE_CLOUD_PROJECT",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
)


def cloud_env(environ: os._Environ[str] | dict[str, str] | None = None) -> dict[str, str]:
    """The standard object-storage variables set here (CLOUD_ENV_VARS), for the environment of Ray
    workers on other nodes. Held in memory only: never write them to a file."""
    env = os.environ if environ is None else environ
    return {k: env[k] for k in CLOUD_ENV_VARS if env.get(k)}


def redact_tree(value: object) -> object:
    """`value` (JSON-like: dicts, lists, strings) with `redact` applied to every string in it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_tree(k): redact_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_tree(v) for v in value]
    return value
