"""OCPP 1.6 configuration: current values, GetConfiguration and ChangeConfiguration. Pure: texts in, results out.

Values are kept in their canonical text form (what GetConfiguration returns): booleans ``true``/``false``,
integers in decimal, CSLs comma-separated without spaces. Input is read tolerantly, the way CSMSs send it:
surrounding blanks are ignored, booleans, measurands and other enumerated words match in any letter case,
CSL items may be separated by ``", "``, empty items and repeated items are dropped. Key names match in any
letter case (CiString50). A write-only key's value is never returned, and no reason text ever contains it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ocpp.v16.enums import ConfigurationStatus

from .config_keys import INT32_MAX, STANDARD_KEYS, Access, InvalidValue, Items, KeyDef, ValueType, parse_value

ACCEPTED, REJECTED = ConfigurationStatus.accepted.value, ConfigurationStatus.rejected.value
REBOOT_REQUIRED, NOT_SUPPORTED = ConfigurationStatus.reboot_required.value, ConfigurationStatus.not_supported.value


class TooManyKeys(ValueError):
    """GetConfiguration asked for more keys than GetConfigurationMaxKeys (answer a CALLERROR)."""


@dataclass(frozen=True)
class ChangeResult:
    status: str  # a ConfigurationStatus value
    key: str  # canonical key name (as requested when NotSupported)
    reason: str  # for the log; never contains a write-only value
    write_only: bool = False
    value: str | None = field(default=None, repr=False)  # canonical new value when accepted; secret if write_only

    @property
    def accepted(self) -> bool:
        return self.status in (ACCEPTED, REBOOT_REQUIRED)

    @property
    def loggable_value(self) -> str | None:
        return None if self.write_only else self.value


class GetResult(NamedTuple):
    configuration_key: list[dict[str, Any]]  # {"key", "readonly", "value"?} per KeyValue
    unknown_key: list[str]

    def payload(self) -> dict[str, Any]:
        """GetConfiguration.conf payload."""
        body: dict[str, Any] = {"configurationKey": self.configuration_key}
        if self.unknown_key:
            body["unknownKey"] = self.unknown_key
        return body


def dependency_order(definitions: Iterable[KeyDef]) -> list[KeyDef]:
    """Keys other keys' validation reads (the *MaxLength keys, NumberOfConnectors) come first."""
    ordered = list(definitions)
    referenced = {d.max_items_key for d in ordered if d.max_items_key} | {"NumberOfConnectors"}
    return [d for d in ordered if d.name in referenced] + [d for d in ordered if d.name not in referenced]


def resolve_values(definitions: Sequence[KeyDef], overrides: Mapping[str, str]) -> tuple[dict[str, str | None],
                                                                                        dict[str, str]]:
    """Defaults overlaid with ``overrides`` (texts by canonical key name), each validated.

    Returns the canonical values and the problems by key name (an override that does not fit, or a default that
    no longer fits because an override lowered a limit). Overrides of unknown keys are problems too.
    """
    values: dict[str, str | None] = {d.name: d.default for d in definitions}
    problems: dict[str, str] = {}
    known = {d.name for d in definitions}
    for name in overrides:
        if name not in known:
            problems[name] = "unknown key"
    for defn in dependency_order(definitions):
        if defn.name in overrides:
            try:
                values[defn.name] = parse_value(defn, overrides[defn.name], values)
            except InvalidValue as exc:
                problems[defn.name] = exc.reason
    for defn in definitions:
        current = values[defn.name]
        if defn.name in overrides or current is None:
            continue
        try:
            parse_value(defn, current, values)
        except InvalidValue as exc:
            problems[defn.name] = f"the default {current!r} does not fit: {exc.reason}"
    return values, problems


def consistency_problems(values: Mapping[str, str | None], max_security_profile: int) -> dict[str, str]:
    """Rules between keys: the security profile must be supported and profiles 1/2 need an AuthorizationKey."""
    problems: dict[str, str] = {}
    profile = int(values.get("SecurityProfile") or 0)
    if profile > max_security_profile:
        problems["SecurityProfile"] = f"profile {profile} is not supported by this station (at most " \
                                      f"{max_security_profile})"
    elif profile in (1, 2) and not values.get("AuthorizationKey"):
        problems["SecurityProfile"] = f"profile {profile} needs an AuthorizationKey (HTTP Basic password)"
    return problems


class Configuration:
    """The station's OCPP configuration: definitions and current values.

    ``values`` are trusted canonical texts (from :func:`resolve_values`). Values of RebootRequired keys change in
    GetConfiguration at once but in the typed getters only in a new instance (after the restart).
    """

    def __init__(self, definitions: Iterable[KeyDef], values: Mapping[str, str | None], *,
                 max_security_profile: int = 1) -> None:
        self.definitions: dict[str, KeyDef] = {d.name: d for d in definitions}
        self._by_fold = {name.casefold(): defn for name, defn in self.definitions.items()}
        missing = [name for name in self.definitions if name not in values]
        if missing:
            raise ValueError(f"no value for {', '.join(missing)}")
        self._values: dict[str, str | None] = {name: values[name] for name in self.definitions}
        self._effective = dict(self._values)
        self.max_security_profile = max_security_profile

    @classmethod
    def defaults(cls, definitions: Sequence[KeyDef] = STANDARD_KEYS, *, max_security_profile: int = 1,
                 **overrides: str) -> Configuration:
        """A configuration from the defaults and ``overrides`` (texts); raises ValueError naming every problem."""
        values, problems = resolve_values(definitions, overrides)
        problems.update(consistency_problems(values, max_security_profile))
        if problems:
            raise ValueError("; ".join(f"{key}: {reason}" for key, reason in problems.items()))
        return cls(definitions, values, max_security_profile=max_security_profile)

    def definition(self, key: str) -> KeyDef | None:
        """The definition of ``key`` in any letter case, or None."""
        return self._by_fold.get(key.strip().casefold()) if isinstance(key, str) else None

    def value(self, key: str) -> str | None:
        """The configured canonical text (None when unset); for write-only keys too, so never log it."""
        return self._values[self._known(key).name]

    def values(self) -> dict[str, str | None]:
        return dict(self._values)

    def get(self, keys: Sequence[str] | None = None) -> GetResult:
        """GetConfiguration: every key when ``keys`` is empty or None, else the known ones and the unknown names."""
        if not keys:
            return GetResult([self._key_value(d) for d in self.definitions.values()], [])
        limit_text = self._values.get("GetConfigurationMaxKeys")
        limit = int(limit_text) if limit_text else 0
        if limit and len(keys) > limit:
            raise TooManyKeys(f"{len(keys)} keys requested, GetConfigurationMaxKeys is {limit}")
        found: list[dict[str, Any]] = []
        unknown: list[str] = []
        seen: set[str] = set()
        for key in keys:
            defn = self.definition(key)
            if defn is None:
                if key not in unknown:
                    unknown.append(key)
            elif defn.name not in seen:
                seen.add(defn.name)
                found.append(self._key_value(defn))
        return GetResult(found, unknown)

    def check_change(self, key: str, value: str) -> ChangeResult:
        """The ChangeConfiguration answer for ``key`` = ``value``, without applying it."""
        defn = self.definition(key)
        if defn is None:
            return ChangeResult(NOT_SUPPORTED, key if isinstance(key, str) else repr(key), "unknown key")
        secret = defn.write_only
        if defn.readonly:
            return ChangeResult(REJECTED, defn.name, "read-only key", secret)
        try:
            canonical = parse_value(defn, value, self._values)
        except InvalidValue as exc:
            return ChangeResult(REJECTED, defn.name, exc.reason, secret)
        if defn.name == "SecurityProfile":
            refusal = self._security_profile_refusal(int(canonical))
            if refusal:
                return ChangeResult(REJECTED, defn.name, refusal, secret)
        if defn.reboot_required:
            return ChangeResult(REBOOT_REQUIRED, defn.name, "applies after a restart", secret, canonical)
        return ChangeResult(ACCEPTED, defn.name, "applied", secret, canonical)

    def apply(self, result: ChangeResult) -> None:
        """Make an accepted change current (RebootRequired ones only in GetConfiguration)."""
        if not result.accepted or result.value is None:
            return
        self._values[result.key] = result.value
        if result.status == ACCEPTED:
            self._effective[result.key] = result.value

    def change(self, key: str, value: str) -> ChangeResult:
        """ChangeConfiguration: check and apply."""
        result = self.check_change(key, value)
        self.apply(result)
        return result

    def set(self, key: str, value: str | int | bool) -> str:
        """Station-side update (HeartbeatInterval from BootNotification.conf, NumberOfConnectors from the wiring):
        any access, effective at once. Returns the canonical text; raises :class:`InvalidValue`.
        """
        defn = self._known(key)
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        canonical = parse_value(defn, text, self._values)
        self._values[defn.name] = self._effective[defn.name] = canonical
        return canonical

    def _security_profile_refusal(self, profile: int) -> str | None:
        current = int(self._values.get("SecurityProfile") or 0)
        if profile < current:
            return f"lowering the security profile from {current} to {profile} is forbidden (A00.FR.005)"
        if profile > self.max_security_profile:
            return f"security profile {profile} is not supported by this station (at most {self.max_security_profile})"
        if profile in (1, 2) and profile != current and not self._values.get("AuthorizationKey"):
            return f"security profile {profile} needs an AuthorizationKey first"
        return None

    def _known(self, key: str) -> KeyDef:
        defn = self.definition(key)
        if defn is None:
            raise KeyError(f"no configuration key {key!r}")
        return defn

    def _key_value(self, defn: KeyDef) -> dict[str, Any]:
        entry: dict[str, Any] = {"key": defn.name, "readonly": defn.readonly}
        value = self._values[defn.name]
        if value is not None and defn.access is not Access.WRITE:
            entry["value"] = value
        return entry

    def _typed(self, key: str, kind: ValueType) -> str:
        defn = self._known(key)
        if defn.type is not kind:
            raise TypeError(f"{defn.name} is a {defn.type.value}, not a {kind.value}")
        value = self._effective[defn.name]
        if value is None:
            raise LookupError(f"{defn.name} has no value")
        return value

    # Typed getters, defined last: inside the class body they shadow the built-in names.
    def bool(self, key: str) -> bool:
        return self._typed(key, ValueType.BOOLEAN) == "true"

    def int(self, key: str) -> int:
        return int(self._typed(key, ValueType.INTEGER))

    def csl(self, key: str) -> list[str]:
        text = self._typed(key, ValueType.CSL)
        return text.split(",") if text else []

    def str(self, key: str) -> str:
        return self._typed(key, ValueType.STRING)



def markdown_key_table(definitions: Sequence[KeyDef] = STANDARD_KEYS) -> str:
    """The key reference of docs/ocpp-configuration.md, one table per profile (a test keeps the doc current)."""
    sections: dict[str, list[str]] = {}
    for defn in definitions:
        rows = sections.setdefault(defn.profile, [
            f"### {defn.profile}", "",
            "| key | type | access | default | reboot | allowed | spec | meaning |",
            "|---|---|---|---|---|---|---|---|"])
        default = "(from the wiring)" if defn.derived else "(none)" if defn.default is None else \
            "(empty)" if defn.default == "" else f"`{defn.default}`"
        spec = ("required" if defn.required else "optional") if defn.standard else "station"
        rows.append(f"| {defn.name} | {defn.type.value} | {defn.access.value} | {default} | "
                    f"{'yes' if defn.reboot_required else 'no'} | {_allowed(defn)} | {spec} | {defn.description} |")
    return "\n\n".join("\n".join(rows) for rows in sections.values()) + "\n"


def _allowed(defn: KeyDef) -> str:
    unit = f" {defn.unit}" if defn.unit else ""
    if defn.type is ValueType.BOOLEAN:
        return "true, false"
    if defn.type is ValueType.INTEGER:
        low = defn.minimum if defn.minimum is not None else -INT32_MAX - 1
        if defn.maximum is None or defn.maximum == INT32_MAX:
            return f"≥ {low}{unit}"
        return f"{low} to {defn.maximum}{unit}"
    if defn.type is ValueType.STRING:
        chars = "printable ASCII" if defn.ascii_only else "printable"
        return ", ".join(defn.choices) if defn.choices else f"{defn.min_length} to {defn.max_length} {chars} characters"
    item = {Items.MEASURAND: "Measurand[.Phase]", Items.PHASE_ROTATION: "connector.rotation (`1.RST`)",
            Items.CHOICE: ", ".join(defn.choices), Items.TEXT: "texts"}[defn.items or Items.TEXT]
    return f"{item}; at most {defn.max_items_key} items" if defn.max_items_key else item
