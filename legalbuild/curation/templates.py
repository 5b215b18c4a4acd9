"""How curated questions are worded: several phrasings per task (the last of the audit and defect
ones is exactly what `legalbuild audit` and eval send), filled with the clause, its type, the
playbook and the playbook's side (`perspective`). A test fills every template with every
playbook's perspective and reads the result for slips (doubled words, stray spacing)."""

from __future__ import annotations

import random
import re

from legalbuild.curation.rulebook import Rule
from legalbuild.prompting import AUDIT_INSTRUCTION, PLAYBOOK_SUFFIX

AUDIT_TEMPLATES = (
    "Review this {type} clause with the {playbook} playbook ({perspective}). Report every red flag "
    "in the audit format, or say that there is none.\n\nClause:\n{clause}",
    "Audit the following contract clause against the {playbook} red-flag rules ({perspective}).\n\n"
    '"""\n{clause}\n"""',
    "Clause under review ({type}):\n{clause}\n\nPlaybook: {playbook}, {perspective}. List the findings "
    "with their rule ids and severities.",
    "Does this clause contain anything the {playbook} playbook would flag? Answer in the structured "
    "audit format.\n\nClause text:\n{clause}",
    "Check the clause below for risks under the {playbook} playbook ({perspective}).\n---\n{clause}\n---",
    "I'm {perspective}. Run the {playbook} checks on this clause and give me the audit.\n\n{clause}",
    AUDIT_INSTRUCTION + PLAYBOOK_SUFFIX,  # the wording `legalbuild audit` and eval use
)
DEFECT_TEMPLATES = (
    "Here is a clause from a draft we received. Review it with the {playbook} playbook "
    "({perspective}) and report the red flags in the audit format.\n\n{clause}",
    "Counterparty draft, {type} clause:\n{clause}\n\nAudit it against the {playbook} rules and list "
    "any findings with rule id and severity.",
    "Before we sign: does this {type} clause raise any {playbook} red flags ({perspective})?\n\n"
    '"""\n{clause}\n"""',
    "Screen this clause for problems using the {playbook} playbook. Use the audit format.\n\nClause:\n{clause}",
    "Playbook: {playbook} ({perspective}).\nClause:\n{clause}\n\nWhat is wrong with this clause, if anything?",
    AUDIT_INSTRUCTION + PLAYBOOK_SUFFIX,
)
FIX_TEMPLATES = (
    "Rewrite this clause so that it passes the {playbook} playbook ({perspective}). Start with the "
    "audit, then give the revised clause.\n\nClause:\n{clause}",
    "Fix the red flags in the following {type} clause under the {playbook} rules and propose "
    "replacement language.\n\n{clause}",
    "Redline this clause for the {playbook} review ({perspective}): list what is wrong, then write "
    'a corrected version.\n\n"""\n{clause}\n"""',
    "Propose a revised clause that resolves every {playbook} finding in the clause below.\n---\n{clause}\n---",
    "Our playbook is {playbook}. Audit this clause and suggest how to reword it.\n\nClause text:\n{clause}",
)
EXPLAIN_TEMPLATES = (
    'Explain why the clause below triggers "{title}" under the {playbook} playbook.\n\n{clause}',
    'Why is this clause a risk when {perspective}? Focus on the rule "{title}" ({rule_id}).\n\nClause:\n{clause}',
    'The {playbook} review flagged this clause as "{title}". Explain the problem in plain language '
    'and what to ask for instead.\n\n"""\n{clause}\n"""',
    "In two or three sentences, why does rule {rule_id} ({title}) fire on this {type} clause?\n\n{clause}",
    'Clause:\n{clause}\n\nA reviewer marked it "{title}" ({severity} severity). Explain why that '
    "matters and what a better clause would say.",
)
MISSING_TEMPLATES = (
    "Here is a short contract. Using the {playbook} playbook ({perspective}), list the required "
    "protections it is missing, in the audit format.\n\n{contract}",
    "Which clauses that the {playbook} playbook expects are absent from this agreement? Report "
    "each gap as a finding with rule id and severity.\n\n{contract}",
    "Check this contract for missing clauses ({perspective}). Only report what is missing, not what "
    'is badly worded.\n\n"""\n{contract}\n"""',
    "Contract excerpt:\n{contract}\n\nPlaybook: {playbook}. What required terms does it lack?",
    "Do a missing-clause review of the agreement below with the {playbook} rules and answer in the "
    "audit format.\n---\n{contract}\n---",
)


def perspective(rule: Rule) -> str:
    """Whose side the playbook takes, as a phrase that starts with "reviewing": the playbook
    descriptions say it two ways ("reviewing NDAs from the recipient side", "Tenant-side review of
    commercial lease agreements — ..."); both become the first form, without the dash's aside."""
    text = (rule.playbook_description or f"the {rule.playbook} playbook").split(" — ")[0]
    text = text.strip().rstrip(".")
    for prefix in ("Red-flag rules for reviewing ", "Red-flag rules for "):
        if text.startswith(prefix):
            text = "reviewing " + text[len(prefix) :]
    text = text.replace("Licensee-side review of", "reviewing, as licensee,")
    side = _SIDE_REVIEW.fullmatch(text)
    if side:
        who = side["side"][0].lower() + side["side"][1:] + (side["aside"] or "")
        text = f"reviewing {side['what']} from the {who} side"
    return text if text.startswith("reviewing") else f"reviewing with the {rule.playbook} playbook"


_SIDE_REVIEW = re.compile(r"(?P<side>.+?)[- ]side(?P<aside> \([^)]*\))? review of (?P<what>.+)")


def fill(template: str, **values: str) -> str:
    return template.format(**values)


def pick(rng: random.Random, templates: tuple[str, ...]) -> str:
    return templates[rng.randrange(len(templates))]
