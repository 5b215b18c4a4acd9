"""Red-flag rulebooks: load YAML playbooks, validate them strictly, and evaluate their regex checks.

A playbook (the redline-buddy format) is a YAML mapping `{name, description, rules: [...]}`; each
rule has `id`, `title`, `severity`, `why`, a `suggestion` and/or `fallback` clause, and a `check`:

    requires_any    red flag when none of `patterns` matches   (something is missing)
    forbids_any     red flag when any of `patterns` matches    (something bad is present)
    forbids_unless  red flag when a pattern matches and none of `unless_any` does
    max_value       red flag when the named group `value` of a pattern exceeds `max`

Patterns are case-insensitive and run on whitespace-collapsed text, exactly as redline-buddy runs
them, so a label computed here is the label the rulebook's own engine gives. Rule ids are only
unique within a playbook, so a rule is cited as `<playbook>.<id>` (e.g. `saas-vendor.liability-cap`).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from legalbuild.curation.clauses import rule_clause_type
from legalbuild.errors import DataError

PACKAGED_REDLINE = "package:redline-buddy"
RULEBOOK_SEVERITIES = ("critical", "high", "medium", "low")
CHECK_KINDS = ("requires_any", "forbids_any", "forbids_unless", "max_value")
# The answer format knows high/medium/low: redline's rare `critical` is reported as `high`.
LABEL_SEVERITY = {"critical": "high", "high": "high", "medium": "medium", "low": "low"}

# Which kind of contract each packaged playbook was written for. A corpus only meets the playbooks
# of its own domain: a software EULA is not reviewed with the gym-membership rules.
SOFTWARE_PLAYBOOKS = frozenset(
    {
        "software-license", "software-licensor", "saas-provider", "saas-vendor", "tos-user",
        "privacy-policy", "data-license-agreement", "dpa",
    }
)  # fmt: skip
NDA_PLAYBOOKS = frozenset({"nda-discloser", "nda-recipient"})
ANY_DOMAIN = "any"


@dataclass(frozen=True)
class Check:
    kind: str
    patterns: tuple[re.Pattern, ...]
    unless: tuple[re.Pattern, ...] = ()
    max: float | None = None
    group: str = "value"


@dataclass(frozen=True)
class Rule:
    id: str  # "<playbook>.<rule id>", unique over all loaded rulebooks
    local_id: str
    playbook: str
    playbook_description: str
    title: str
    severity: str  # label severity: high | medium | low
    rulebook_severity: str  # as written in the file (may be `critical`)
    description: str
    why: str
    suggestion: str
    fallback: str
    check: Check
    clause_type: str  # the clause type a `requires_any` rule speaks about
    domain: str  # software | nda | general | any
    path: str
    line: int

    def violated(self, text: str) -> bool:
        """True when the rule raises a red flag on `text`."""
        return evidence(self, text) is not None

    @property
    def flags_absence(self) -> bool:
        return self.check.kind == "requires_any"


def normalize_text(text: str) -> str:
    return " ".join(text.split())


def evidence(rule: Rule, text: str) -> str | None:
    """Why the rule fires on `text`: the offending excerpt, "" for a missing term, None when clean."""
    text = normalize_text(text)
    check = rule.check
    if check.kind == "requires_any":
        return None if any(p.search(text) for p in check.patterns) else ""
    if check.kind == "max_value":
        return _over_max(check, text)
    hit = next((m for p in check.patterns if (m := p.search(text))), None)
    if hit is None:
        return None
    if check.kind == "forbids_unless" and any(u.search(text) for u in check.unless):
        return None
    return excerpt(text, hit.start(), hit.end())


def _over_max(check: Check, text: str) -> str | None:
    for p in check.patterns:
        for m in p.finditer(text):
            try:
                value = float(m.group(check.group))
            except (IndexError, ValueError, TypeError):
                continue
            if check.max is not None and value > check.max:
                return excerpt(text, m.start(), m.end())
    return None


def excerpt(text: str, start: int, end: int, window: int = 100) -> str:
    """The matched words with up to `window` characters of context, cut on word boundaries."""
    lo, hi = max(0, start - window), min(len(text), end + window)
    if lo > 0 and (space := text.find(" ", lo, start)) != -1:
        lo = space + 1
    if hi < len(text) and (space := text.rfind(" ", end, hi)) != -1:
        hi = space
    return ("…" if lo > 0 else "") + text[lo:hi].strip() + ("…" if hi < len(text) else "")


# ------------------------------------------------------------------------------------ loading
@dataclass
class Rulebook:
    rules: list[Rule]
    files: list[Path]

    def by_playbook(self) -> dict[str, list[Rule]]:
        out: dict[str, list[Rule]] = {}
        for rule in self.rules:
            out.setdefault(rule.playbook, []).append(rule)
        return out

    def get(self, rule_id: str) -> Rule:
        return next(r for r in self.rules if r.id == rule_id)


def packaged_playbooks_dir() -> Path:
    spec = importlib.util.find_spec("redline")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "rulebook `package:redline-buddy` needs the redline-buddy package",
            hint="pip install 'legalbuild[data]' (or redline-buddy==0.2.0)",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "playbooks"


def rulebook_files(specs: list[str], base_dir: Path) -> list[Path]:
    """Every YAML file the rulebook specs name (a file, a folder of *.yaml/*.yml, or the package)."""
    files: list[Path] = []
    for spec in specs:
        if spec == PACKAGED_REDLINE:
            files += sorted(packaged_playbooks_dir().glob("*.yaml"))
            continue
        if spec.startswith("package:"):
            raise DataError(
                f"unknown packaged rulebook {spec!r}",
                hint=f"the packaged one is {PACKAGED_REDLINE!r}",
            )
        path = Path(spec).expanduser()
        path = path if path.is_absolute() else (base_dir / path).resolve()
        if path.is_dir():
            found = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
            if not found:
                raise DataError(f"{path}: rulebook folder holds no .yaml/.yml playbook")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(
                f"{path}: rulebook not found", hint="paths are relative to the recipe's folder"
            )
    return files


def load_rulebooks(specs: list[str], base_dir: Path) -> Rulebook:
    files = rulebook_files(specs, base_dir)
    packaged = packaged_playbooks_dir() if PACKAGED_REDLINE in specs else None
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for path in files:
        for rule in load_playbook(path, packaged=packaged is not None and path.parent == packaged):
            if rule.id in seen:
                raise DataError(
                    f"{path}:{rule.line}: rule {rule.local_id!r}: id {rule.id!r} is already defined in {seen[rule.id]}",
                    hint="rule ids are <playbook name>.<rule id>: rename the playbook or the rule",
                )
            seen[rule.id] = f"{rule.path}:{rule.line}"
            rules.append(rule)
    if not rules:
        raise DataError("the rulebooks hold no rule", hint="check [curate] rulebooks")
    return Rulebook(rules=rules, files=files)


class _LineLoader(yaml.SafeLoader):
    """A safe loader that records the line of every mapping under the key `__line__`."""


def _mapping_with_line(loader: _LineLoader, node: yaml.MappingNode) -> dict:
    mapping = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_with_line)


def load_playbook(path: Path, packaged: bool = False) -> list[Rule]:
    """Parse and validate one playbook; any problem raises DataError naming the file, line and rule."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_LineLoader)  # noqa: S506 (safe loader)
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read rulebook: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: a playbook must be a YAML mapping with `name` and `rules`")
    name = data.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise DataError(
            f"{path}:{data['__line__']}: playbook `name` must be a short identifier (got {name!r})"
        )
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise DataError(f"{path}: playbook {name!r}: `rules` must be a non-empty list")
    domain = _domain(name) if packaged else ANY_DOMAIN
    description = str(data.get("description") or "")
    rules, local_ids = [], set()
    for index, raw in enumerate(raw_rules):
        rule = _parse_rule(path, name, description, domain, index, raw)
        if rule.local_id in local_ids:
            raise DataError(
                f"{path}:{rule.line}: rule {rule.local_id!r}: duplicate id in playbook {name!r}"
            )
        local_ids.add(rule.local_id)
        rules.append(rule)
    return rules


def _domain(playbook: str) -> str:
    if playbook in SOFTWARE_PLAYBOOKS:
        return "software"
    return "nda" if playbook in NDA_PLAYBOOKS else "general"


def _parse_rule(
    path: Path, playbook: str, pb_description: str, domain: str, index: int, raw: object
) -> Rule:
    if not isinstance(raw, dict):
        raise DataError(f"{path}: playbook {playbook!r}: rule #{index + 1} must be a mapping")
    line = raw.get("__line__", 0)
    rid = raw.get("id")
    where = f"{path}:{line}: rule {rid!r}" if rid else f"{path}:{line}: rule #{index + 1}"
    if not isinstance(rid, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", rid):
        raise DataError(f"{where}: `id` must be a short identifier (got {rid!r})")
    for key in ("title", "severity", "why", "check"):
        if not raw.get(key):
            raise DataError(
                f"{where}: missing required field `{key}`",
                hint="see redline/playbooks/*.yaml for the format",
            )
    if not (raw.get("suggestion") or raw.get("fallback")):
        raise DataError(f"{where}: needs a `suggestion` or a `fallback` clause (both are missing)")
    severity = str(raw["severity"]).lower()
    if severity not in RULEBOOK_SEVERITIES:
        raise DataError(
            f"{where}: `severity` must be one of {', '.join(RULEBOOK_SEVERITIES)} (got {raw['severity']!r})"
        )
    check = _parse_check(where, raw["check"])
    title = _text(raw["title"])
    description = _text(raw.get("description") or title)
    return Rule(
        id=f"{playbook}.{rid}",
        local_id=rid,
        playbook=playbook,
        playbook_description=_text(pb_description),
        title=title,
        severity=LABEL_SEVERITY[severity],
        rulebook_severity=severity,
        description=description,
        why=_text(raw["why"]),
        suggestion=_text(raw.get("suggestion") or ""),
        fallback=_text(raw.get("fallback") or ""),
        check=check,
        clause_type=rule_clause_type(f"{rid} {title} {description}"),
        domain=domain,
        path=str(path),
        line=line,
    )


def _text(value: object) -> str:
    return " ".join(str(value).split())


def _parse_check(where: str, raw: object) -> Check:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: `check` must be a mapping with `kind` and `patterns`")
    kind = raw.get("kind")
    if kind not in CHECK_KINDS:
        raise DataError(
            f"{where}: check.kind must be one of {', '.join(CHECK_KINDS)} (got {kind!r})"
        )
    patterns = _compile_list(where, "check.patterns", raw.get("patterns"), required=True)
    # redline treats a forbids_unless without unless_any as forbids_any: accepted, but still a list of regexes
    unless = _compile_list(where, "check.unless_any", raw.get("unless_any"), required=False)
    limit, group = raw.get("max"), str(raw.get("group", "value"))
    if kind == "max_value":
        if isinstance(limit, bool) or not isinstance(limit, int | float):
            raise DataError(f"{where}: a max_value check needs a numeric `max` (got {limit!r})")
        missing = [p.pattern for p in patterns if group not in p.groupindex]
        if missing:
            raise DataError(
                f"{where}: check.patterns {missing} lack the named group (?P<{group}>...)"
            )
    return Check(
        kind=kind,
        patterns=patterns,
        unless=unless,
        max=float(limit) if limit is not None else None,
        group=group,
    )


def _compile_list(where: str, field: str, raw: object, required: bool) -> tuple[re.Pattern, ...]:
    if (raw is None or raw == []) and not required:
        return ()
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{where}: `{field}` must be a non-empty list of regular expressions")
    compiled = []
    for i, pattern in enumerate(raw):
        if (
            not isinstance(pattern, str | int | float)
            or isinstance(pattern, bool)
            or str(pattern) == ""
        ):
            raise DataError(f"{where}: {field}[{i}] must be a non-empty string (got {pattern!r})")
        try:
            compiled.append(re.compile(str(pattern), re.IGNORECASE | re.DOTALL))
        except re.error as exc:
            raise DataError(
                f"{where}: {field}[{i}] {str(pattern)!r} is not a valid regular expression: {exc}"
            ) from None
    return tuple(compiled)
