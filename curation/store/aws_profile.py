"""AWS profiles for ``s3://`` stores. obstore reads the ``AWS_*`` variables, web identity and
instance or container roles itself, but not the shared credentials file; this reads a profile from
it, in the AWS chain's order: variables first, then ``AWS_PROFILE`` (or ``default``) in
``AWS_SHARED_CREDENTIALS_FILE`` (or ``~/.aws/credentials``), then obstore's roles."""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from curation.errors import CurationError


def profile_credentials(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The profile's static credentials (obstore's S3Credential), or None where the chain goes on
    without them; one line for a named profile that is missing or incomplete."""
    env = os.environ if environ is None else environ
    if env.get("AWS_ACCESS_KEY_ID"):
        return None
    named = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE")
    path = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials").expanduser()
    parser = configparser.RawConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise CurationError(f"AWS credentials file {path} cannot be read: {str(exc).splitlines()[0]}") from None
    profile = named or "default"
    if not parser.has_section(profile):
        if named:
            raise CurationError(f"AWS_PROFILE={named}: no such profile in {path}")
        return None
    section = parser[profile]
    if not section.get("aws_access_key_id") or not section.get("aws_secret_access_key"):
        raise CurationError(f"AWS profile {profile} in {path} needs aws_access_key_id and aws_secret_access_key")
    return {
        "access_key_id": section["aws_access_key_id"],
        "secret_access_key": section["aws_secret_access_key"],
        "token": section.get("aws_session_token"),
        "expires_at": None,
    }
