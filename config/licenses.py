"""Licences and what they allow: plain Python, so the routing actors' processes need no pydantic."""

from __future__ import annotations

from collections.abc import Collection
from enum import StrEnum


class License(StrEnum):
    phone_system = "phone_system"
    contact_center = "contact_center"
    contact_center_whatsapp = "contact_center_whatsapp"


# Agents need the base licence and the WhatsApp add-on; supervisors need Contact Center.
AGENT_LICENSES = frozenset({License.phone_system, License.contact_center_whatsapp})
SUPERVISOR_CONFIG_LICENSE = License.contact_center


def holds_agent_licenses(licenses: Collection[str]) -> bool:
    return set(licenses) >= AGENT_LICENSES


def missing_agent_license(licenses: Collection[str]) -> License | None:
    for license_ in (License.phone_system, License.contact_center_whatsapp):
        if license_ not in set(licenses):
            return license_
    return None
