"""Web shell (placeholder until the pages land)."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI

from telemed.core.plugins import DomainPlugin


def mount_web(app: FastAPI, domains: Sequence[DomainPlugin]) -> None:
    return None
