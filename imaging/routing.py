"""Routing rules: which county department's reading worklist a stable study goes to, and how urgently.

Rules are data (``routing.yaml``), not code, so a county changes them without a release, as dcm4chee's export
rules and Orthanc's ``OnStableStudy`` scripts are used. A rule matches on the study's modalities, body parts,
sending facility and calling AE title; the first rule that matches wins and a default catches the rest.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator


class Priority(StrEnum):
    stat = "stat"
    urgent = "urgent"
    routine = "routine"


class Worklist(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    facility: str = Field(min_length=1, max_length=32)
    department: str = Field(min_length=1, max_length=64)

    @property
    def code(self) -> str:
        return f"{self.facility}/{self.department}"


class Match(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    modality: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    sending_facility: tuple[uuid.UUID, ...] = ()
    calling_ae: tuple[str, ...] = ()

    @field_validator("modality", "body_part", "calling_ae", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple):
            return tuple(str(item).strip().upper() for item in value)
        return value


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    match: Match = Match()
    worklist: Worklist
    priority: Priority = Priority.routine


class RoutingTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1
    aliases: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    default: Rule

    def canonical_body_part(self, value: str) -> str:
        wanted = value.strip().upper()
        for canonical, synonyms in self.aliases.items():
            if wanted == canonical.upper() or wanted in {s.strip().upper() for s in synonyms}:
                return canonical.upper()
        return wanted

    def route(self, study: StudyFacts) -> Rule:
        modalities = {m.upper() for m in study.modalities}
        body_parts = {self.canonical_body_part(b) for b in study.body_parts}
        calling = {ae.strip().upper() for ae in study.calling_aes}
        for rule in self.rules:
            criteria = rule.match
            if criteria.modality and not modalities & set(criteria.modality):
                continue
            if criteria.body_part and not body_parts & {self.canonical_body_part(b) for b in criteria.body_part}:
                continue
            if criteria.sending_facility and study.facility_id not in criteria.sending_facility:
                continue
            if criteria.calling_ae and not calling & set(criteria.calling_ae):
                continue
            return rule
        return self.default


@dataclass(frozen=True, slots=True)
class StudyFacts:
    """What routing may look at: codes and ids, never names."""

    modalities: Sequence[str]
    body_parts: Sequence[str]
    facility_id: uuid.UUID | None
    calling_aes: Iterable[str] = ()


def parse_routing(text: str) -> RoutingTable:
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError("a routing file is a YAML mapping with 'rules' and 'default'")
    return RoutingTable.model_validate(data)


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> RoutingTable:
    return parse_routing(Path(path).read_text(encoding="utf-8"))


def load_routing(path: Path) -> RoutingTable:
    """The routing table in ``path``, re-read when the file changes (a county edits it while running)."""
    return _load(str(path), path.stat().st_mtime_ns)
