"""References between a Bundle's entries, resolved as the FHIR spec says: by each entry's fullUrl (urn:uuid or an
absolute URL), relative references read against the referring entry's base, this server's own absolute URLs read as
relative, and conditional references (`Patient?identifier=...`) resolved by a search with the caller's access."""

from __future__ import annotations

import re
from typing import Any

from flask import has_request_context, request

from hie.exchange import conditional
from hie.exchange.outcome import FhirError
from hie.exchange.resources import WRITABLE, references
from hie.platform.audit import services as audit
from hie.platform.auth.identity import Identity

_ABSOLUTE = re.compile(r"(?P<base>https?://[^?#]+?/)(?P<local>[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64})"
                       r"(?:/_history/[A-Za-z0-9\-.]{1,64})?", re.ASCII)
_RELATIVE = re.compile(r"(?P<local>[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?",
                       re.ASCII)
_CONDITIONAL = re.compile(r"(?P<type>[A-Z][A-Za-z]{1,63})\?(?P<criteria>.+)", re.ASCII | re.DOTALL)


def server_base() -> str | None:
    """This server's FHIR base (`http://host/fhir/`), whose absolute references are relative ones."""
    return f"{request.host_url}fhir/" if has_request_context() else None


class Aliases:
    """What each entry's fullUrl now names (`Type/id` as stored), and the base each absolute fullUrl sits at."""

    def __init__(self) -> None:
        self.by_url: dict[str, str] = {}
        self.base_of: dict[int, str] = {}

    def add(self, full_url: Any, resource_type: str, resource_id: str, index: int) -> None:
        """Record an entry's fullUrl (none, or one in another form, names nothing another entry can point at)."""
        where = [f"Bundle.entry[{index}].fullUrl"]
        if not isinstance(full_url, str):
            return
        key = full_url
        if not full_url.startswith("urn:uuid:"):
            absolute = _ABSOLUTE.fullmatch(full_url)
            if absolute is None:
                return
            if absolute["local"].split("/", 1)[0] != resource_type:
                raise FhirError(400, "invalid", f"fullUrl {full_url[:200]} names another type than the entry's "
                                f"{resource_type}.", where)
            key = absolute["base"] + absolute["local"]
            self.base_of[index] = absolute["base"]
        if key in self.by_url:
            raise FhirError(400, "invalid", f"fullUrl {full_url[:200]} is the fullUrl of two entries.", where)
        self.by_url[key] = f"{resource_type}/{resource_id}"

    def _relative(self, local: str, referrer: int) -> str | None:
        """The entry a relative reference names: at the referrer's base, else the one entry at any base."""
        base = self.base_of.get(referrer)
        if base is not None and base + local in self.by_url:
            return self.by_url[base + local]
        found = {self.by_url[base + local] for base in set(self.base_of.values()) if base + local in self.by_url}
        return found.pop() if len(found) == 1 else None

    def resolve(self, reference: str, referrer: int, where: str) -> str | None:
        """The stored `Type/id` a reference to another entry or to this server names; None leaves it as written."""
        if reference.startswith("urn:uuid:"):
            if reference not in self.by_url:
                raise FhirError(400, "invalid", f"{reference[:200]} is not the fullUrl of any entry.", [where])
            return self.by_url[reference]
        absolute = _ABSOLUTE.fullmatch(reference)
        if absolute is not None:
            key = absolute["base"] + absolute["local"]
            if key in self.by_url:
                return self.by_url[key]
            own = server_base()
            if absolute["base"] != own:
                return None
            return self._relative(absolute["local"], referrer) or reference[len(own):]
        relative = _RELATIVE.fullmatch(reference)
        return self._relative(relative["local"], referrer) if relative is not None else None


def conditional_target(identity: Identity, reference: str, where: str) -> str:
    """`Type/id` of the one record a conditional reference's criteria match among those the caller may see: none is
    404 and several 412, naming the reference."""
    asked = _CONDITIONAL.fullmatch(reference)
    if asked is None:
        raise FhirError(400, "invalid", "A conditional reference is <type>?<criteria>.", [where])
    resource_type = asked["type"]
    found = conditional.matches(identity, resource_type,
                                conditional.criteria(resource_type, asked["criteria"], where), where)
    if len(found) == 1:
        return f"{resource_type}/{found[0]['id']}"
    several = len(found) > 1
    audit.record("read", "failure", resource_type=resource_type,
                 detail=f"{where}: conditional reference matches {'several records' if several else 'no record'}")
    if several:
        raise FhirError(412, "multiple-matches", f"The conditional reference {reference[:200]} matches more than "
                        f"one {resource_type}; make it selective enough to name one record.", [where])
    raise FhirError(404, "not-found", f"The conditional reference {reference[:200]} matches no {resource_type} "
                    "you may see.", [where])


def rewrite(identity: Identity, resource: dict[str, Any], path: str, referrer: int, aliases: Aliases) -> None:
    """Point every reference of one entry's resource at the stored ids it means, in place."""
    for where, reference in references(resource, path):
        target = reference["reference"]
        if "?" in target and not target.startswith(("http://", "https://")):
            if target.split("?", 1)[0] in WRITABLE:  # a type not held here cannot be searched: kept as written
                reference["reference"] = conditional_target(identity, target, where)
            continue
        resolved = aliases.resolve(target, referrer, where)
        if resolved is not None:
            reference["reference"] = resolved
