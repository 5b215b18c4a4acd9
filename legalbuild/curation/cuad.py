"""The CUAD labels as audit answers, and answers back as CUAD labels: one reviewed table.

CUAD v1 (The Atticus Project, CC BY 4.0; Hendrycks et al., 2021) labels a contract clause by what
it *is* (37 categories kept: "Non-Compete", "Governing Law", ...), not by whether it is bad for
one side. A reviewer wants both, so the table says, per category, in our own words (no CUAD text):
whether the kind of clause is a red flag by itself (the 16 of `RED_FLAGS`), for which side, with
what severity, the finding a reviewer raises (title, rule id, why, fix), and for the others a
short note on why the type alone raises nothing. A rule id reuses a redline-buddy rule where one
means the same red flag, else it is `cuad.<topic>`.

Both directions live here:
- `answer_for(categories)`: the training answer for a clause of these categories: a
  `Clause type:` line naming them, then the audit (a finding per red-flag category, worst first);
- `finding_topics(audit)` / `type_topics(audit)`: which categories an answer raises, read
  conservatively from finding rule ids and exact titles (never from the Why/Fix text, which echoes
  clause words) and from the `Clause type:` line. `RULE_TOPICS` maps redline-buddy rule ids too: a
  rule maps to a category only when a finding from it, if true, means the clause *is* of that
  category (a rule flagging the absence of a term says the opposite and maps to nothing).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from legalbuild.answer_format import SEVERITIES, Audit, Finding, overall_risk, render_audit
from legalbuild.errors import DataError

ATTRIBUTION = "CUAD v1, The Atticus Project, CC BY 4.0 (Hendrycks et al., 2021)"


@dataclass(frozen=True)
class Category:
    name: str  # CUAD's category name, exactly
    red_flag: bool  # the kind of clause is a risk by itself (for `side`)
    severity: str = ""
    side: str = ""  # whose risk it is
    title: str = ""
    rule_id: str = ""
    why: str = ""
    fix: str = ""
    note: str = ""  # not a red flag: why the type alone raises nothing

    def finding(self) -> Finding:
        return Finding(self.title, self.rule_id, self.severity, why=self.why, fix=self.fix)


CATEGORIES: dict[str, Category] = {
    "Uncapped Liability": Category(
        "Uncapped Liability",
        True,
        "high",
        "the party whose liability is left unlimited",
        "Liability is uncapped",
        "consulting-vendor.liability-cap",
        "Some claims have no ceiling, so one incident can cost far more than the contract is worth.",
        "Cap aggregate liability at the fees of the prior 12 months and list any exceptions narrowly.",
    ),
    "Cap on Liability": Category(
        "Cap on Liability",
        True,
        "medium",
        "the party that would claim damages",
        "Recoverable damages are capped",
        "cuad.liability-cap",
        "A low cap or a broad exclusion of damages can leave real losses unrecovered.",
        "Check the cap amount against the exposure and carve out confidentiality, IP and data breaches.",
    ),
    "Termination for Convenience": Category(
        "Termination for Convenience",
        True,
        "high",
        "the party that can be dropped without cause",
        "Termination for convenience",
        "reseller-agreement.vendor-termination-for-convenience",
        "The other side can walk away without cause, stranding your investment in the relationship.",
        "Require long notice, a wind-down period and payment for work done and committed costs.",
    ),
    "Non-Compete": Category(
        "Non-Compete",
        True,
        "high",
        "the party restricted",
        "Non-compete restriction",
        "consulting-vendor.non-compete",
        "It bars you from competing business, which can outlast the deal and shrink your market.",
        "Limit it to named products, a defined territory and the term plus at most one year.",
    ),
    "Exclusivity": Category(
        "Exclusivity",
        True,
        "medium",
        "the party bound to deal exclusively",
        "Exclusive dealing obligation",
        "cuad.exclusivity",
        "You may not use other suppliers, customers or partners in the covered field.",
        "Tie exclusivity to minimum commitments, a short term and a clear exit if targets are missed.",
    ),
    "IP Ownership Assignment": Category(
        "IP Ownership Assignment",
        True,
        "high",
        "the party that creates the IP",
        "IP ownership passes to the other party",
        "consulting-vendor.ip-assignment-scope",
        "Work you create becomes theirs, including improvements you may need for other clients.",
        "Assign only the paid deliverables; keep background IP and take a licence back to improvements.",
    ),
    "Anti-Assignment": Category(
        "Anti-Assignment",
        True,
        "medium",
        "the party that may sell or restructure",
        "Assignment needs the other party's consent",
        "software-license.transfer-restriction",
        "Without consent the contract cannot follow a sale or reorganisation of your business.",
        "Allow assignment without consent to affiliates and to a successor of the business.",
    ),
    "Renewal Term": Category(
        "Renewal Term",
        True,
        "medium",
        "the party that may want to exit",
        "Automatic renewal",
        "saas-vendor.auto-renewal",
        "The term rolls over on its own, so a missed date locks you in for another period.",
        "Renew only by written agreement, or send a reminder before each renewal date.",
    ),
    "Notice Period to Terminate Renewal": Category(
        "Notice Period to Terminate Renewal",
        True,
        "medium",
        "the party that may want to exit",
        "Deadline to stop the renewal",
        "cuad.renewal-notice",
        "Non-renewal only works if notice arrives before a fixed date, which is easy to miss.",
        "Shorten the notice period to 30 days and diary the date; ask for a reminder notice.",
    ),
    "Liquidated Damages": Category(
        "Liquidated Damages",
        True,
        "medium",
        "the party that pays on breach",
        "Liquidated damages or fixed penalty",
        "cuad.liquidated-damages",
        "A preset sum is owed on breach or exit whatever the real loss turns out to be.",
        "Make the sum a genuine pre-estimate of loss, cap it and make it the sole remedy.",
    ),
    "Audit Rights": Category(
        "Audit Rights",
        True,
        "high",
        "the party audited",
        "Other party can audit your books",
        "software-license.vendor-audit-rights",
        "Audits cost staff time, expose records and can end in back charges.",
        "Limit audits to once a year, on 30 days' notice, in business hours, at the auditor's cost.",
    ),
    "Governing Law": Category(
        "Governing Law",
        True,
        "low",
        "the party far from the chosen law and forum",
        "Governing law and forum are fixed",
        "cuad.governing-law",
        "A foreign law or court makes any dispute slower and dearer for the party far from it.",
        "Choose your home law and courts, or a neutral forum, before signing.",
    ),
    "Insurance": Category(
        "Insurance",
        True,
        "low",
        "the party that must buy the cover",
        "Insurance obligations",
        "cuad.insurance",
        "Required policies and limits cost money and a lapse is a breach.",
        "Check the limits against your current policies and require the same cover from the other side.",
    ),
    "Warranty Duration": Category(
        "Warranty Duration",
        True,
        "medium",
        "the buyer or customer",
        "Warranty period is limited",
        "cuad.warranty-duration",
        "Defects found after a short window are not covered and the cost falls on you.",
        "Extend the warranty to at least 12 months from acceptance and restart it for repairs.",
    ),
    "Most Favored Nation": Category(
        "Most Favored Nation",
        True,
        "medium",
        "the party that grants the terms",
        "Most favored terms promised",
        "cuad.most-favored-nation",
        "Better terms given to anyone else must also be given here, which limits future deals.",
        "Limit it to identical products, volumes and terms, and to a fixed period.",
    ),
    "Change of Control": Category(
        "Change of Control",
        True,
        "medium",
        "the party that may be acquired",
        "Change of control trigger",
        "cuad.change-of-control",
        "A merger or sale of your company lets the other side terminate or demand consent.",
        "Remove the trigger or limit it to an acquisition by a direct competitor.",
    ),
    "Expiration Date": Category(
        "Expiration Date", False, note="A fixed term states when the contract ends."
    ),
    "Competitive Restriction Exception": Category(
        "Competitive Restriction Exception", False, note="It narrows a restriction."
    ),
    "No-Solicit of Customers": Category(
        "No-Solicit of Customers", False, note="A customer non-solicit is common here."
    ),
    "No-Solicit of Employees": Category(
        "No-Solicit of Employees", False, note="A staff non-solicit is common here."
    ),
    "Non-Disparagement": Category(
        "Non-Disparagement", False, note="A mutual promise not to disparage."
    ),
    "Rofr/Rofo/Rofn": Category(
        "Rofr/Rofo/Rofn", False, note="A first refusal or offer right; check its timing."
    ),
    "Revenue/Profit Sharing": Category(
        "Revenue/Profit Sharing", False, note="A payment term; check the amounts."
    ),
    "Price Restrictions": Category(
        "Price Restrictions", False, note="A pricing term; check the amounts."
    ),
    "Minimum Commitment": Category(
        "Minimum Commitment", False, note="A volume commitment; check it is achievable."
    ),
    "Volume Restriction": Category(
        "Volume Restriction", False, note="A usage limit; check it fits your needs."
    ),
    "Joint IP Ownership": Category(
        "Joint IP Ownership", False, note="Shared ownership; check exploitation rights."
    ),
    "License Grant": Category("License Grant", False, note="A licence grant; check its scope."),
    "Non-Transferable License": Category(
        "Non-Transferable License", False, note="A usual limit on a licence."
    ),
    "Affiliate License-Licensor": Category(
        "Affiliate License-Licensor", False, note="Extends a licence to affiliates."
    ),
    "Affiliate License-Licensee": Category(
        "Affiliate License-Licensee", False, note="Extends a licence to affiliates."
    ),
    "Unlimited/All-You-Can-Eat-License": Category(
        "Unlimited/All-You-Can-Eat-License", False, note="A broad usage right."
    ),
    "Irrevocable or Perpetual License": Category(
        "Irrevocable or Perpetual License", False, note="A lasting licence; check scope."
    ),
    "Source Code Escrow": Category(
        "Source Code Escrow", False, note="Escrow protects the licensee."
    ),
    "Post-Termination Services": Category(
        "Post-Termination Services", False, note="Duties after the end; check the cost."
    ),
    "Covenant Not to Sue": Category(
        "Covenant Not to Sue", False, note="A promise not to sue; check its reach."
    ),
    "Third Party Beneficiary": Category(
        "Third Party Beneficiary", False, note="Names who else may enforce terms."
    ),
}
RED_FLAGS = tuple(name for name, c in CATEGORIES.items() if c.red_flag)

# redline-buddy rule ids whose finding means the clause is of the category (see the docstring);
# Governing Law, Notice Period to Terminate Renewal and Warranty Duration: no rule asserts them.
_RULEBOOK_TOPICS: dict[str, tuple[str, ...]] = {
    'Uncapped Liability': (
        'dpa-processor.uncapped-breach-liability',
        'event-venue.uncapped-damage-liability',
        'client-sow.liability-cap',
        'consulting-msa.liability-cap',
        'saas-provider.liability-cap',
        'saas-vendor.liability-cap',
        'software-licensor.liability-cap',
        'consulting-vendor.liability-cap',
    ),
    'Cap on Liability': (
        'moving-company.released-value-default',
        'software-escrow.escrow-agent-liability-cap',
    ),
    'Liquidated Damages': (
        'construction-contractor.uncapped-liquidated-damages',
    ),
    'Termination for Convenience': (
        'saas-provider.termination-convenience',
        'distribution-agreement.termination-without-cause',
        'reseller-agreement.vendor-termination-for-convenience',
        'distribution-manufacturer.distributor-termination-convenience',
        'nonprofit-grant.funder-termination',
        'construction-contractor.termination-convenience-no-compensation',
        'tos-user.account-termination-any-reason',
    ),
    'Non-Compete': (
        'contractor.non-compete',
        'nda-recipient.hidden-non-compete',
        'client-sow.non-compete',
        'consulting-msa.non-compete',
        'offer-letter.non-compete',
        'consulting-vendor.non-compete',
        'severance-agreement.non-compete-in-severance',
        'employment-agreement.non-compete',
        'distribution-agreement.post-term-non-compete',
        'franchise-agreement.post-term-non-compete',
        'employment-employer.non-compete-overbroad',
        'advisor-agreement.non-compete',
        'partnership-agreement.broad-post-exit-noncompete',
        'distribution-manufacturer.post-term-non-compete-manufacturer',
        'reseller-agreement.exclusivity-noncompete',
    ),
    'Exclusivity': (
        'commercial-landlord.exclusivity-grant',
        'reseller-agreement.exclusivity-noncompete',
        'distribution-manufacturer.exclusivity-no-minimums',
        'term-sheet.long-exclusivity',
        'event-venue.exclusive-inhouse-vendors',
    ),
    'IP Ownership Assignment': (
        'ip-assignment.unrelated-future-ip-capture',
        'ip-assignment.post-employment-trailer',
        'employment-agreement.ip-assignment-overbroad',
        'consulting-vendor.ip-assignment-scope',
        'advisor-agreement.ip-no-carveout',
        'saas-provider.ip-ownership',
        'distribution-manufacturer.distributor-owns-adaptations',
        'software-licensor.improvements-ownership',
        'nonprofit-grant.ip-ownership',
    ),
    'Anti-Assignment': (
        'software-license.transfer-restriction',
        'equipment-lease.assignment-restriction',
        'lease-tenant.subletting',
    ),
    'Renewal Term': (
        'equipment-lease.evergreen-auto-renewal',
        'gym-membership.auto-renewal',
        'saas-vendor.auto-renewal',
        'healthcare-services.auto-renewal',
        'consulting-msa.auto-renewal',
        'lease-tenant.auto-renewal',
    ),
    'Audit Rights': (
        'software-license.vendor-audit-rights',
        'saas-provider.audit-rights',
        'data-license-agreement.broad-usage-audit',
        'dpa-processor.unlimited-audit-rights',
    ),
    'Insurance': (
        'consulting-vendor.insurance-terms',
        'equipment-lease.insurance-burden',
        'self-storage.forced-insurance',
    ),
    'Most Favored Nation': (
        'distribution-manufacturer.most-favored-distributor',
    ),
    'Change of Control': (
        'convertible-note.change-of-control-multiple',
    ),
}  # fmt: skip
RULE_TOPICS: dict[str, frozenset[str]] = {}
for _name, _ids in _RULEBOOK_TOPICS.items():
    for _id in _ids:
        RULE_TOPICS[_id] = RULE_TOPICS.get(_id, frozenset()) | {_name}
for _name in RED_FLAGS:
    _id = CATEGORIES[_name].rule_id
    RULE_TOPICS[_id] = RULE_TOPICS.get(_id, frozenset()) | {_name}
TITLE_TOPICS = {CATEGORIES[n].title.casefold(): n for n in RED_FLAGS}
_BY_FOLDED = {name.casefold(): name for name in CATEGORIES}


# ---------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class LabelledClause:
    id: str
    document: str  # the contract it comes from (splits and groups go by contract)
    text: str
    categories: tuple[str, ...]


def read_labelled(path: Path) -> list[LabelledClause]:
    """Rows of a clause-level CUAD file (one JSON object a line: id, document, text, categories);
    a row naming a category the table lacks is a DataError (the labels would be misread)."""
    from legalbuild.data.readers import read_jsonl

    rows = []
    for lineno, obj in read_jsonl(path):
        try:
            cats = tuple(obj["categories"])
            row = LabelledClause(str(obj["id"]), str(obj["document"]), str(obj["text"]), cats)
        except (KeyError, TypeError) as exc:
            raise DataError(
                f"{path}:{lineno}: not a labelled clause ({exc})",
                hint='each line needs "id", "document", "text" and "categories"',
            ) from None
        unknown = [c for c in cats if c not in CATEGORIES]
        if unknown or not cats:
            raise DataError(
                f"{path}:{lineno}: unknown CUAD categor{'y' if len(unknown) == 1 else 'ies'} {unknown}"
                if unknown
                else f"{path}:{lineno}: no category",
                hint=f"the table knows the 37 categories of {ATTRIBUTION}",
            )
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------- answers
def ordered(categories: tuple[str, ...] | list[str]) -> list[str]:
    """The categories in the table's order (CUAD's), each once."""
    order = list(CATEGORIES)
    return sorted(set(categories), key=order.index)


def answer_for(categories: tuple[str, ...] | list[str], listed: list[Finding] = ()) -> str:
    """The training answer: the clause type line, then a finding per red-flag category (worst
    first) or "Findings: none" with the category's note. `listed`: the findings of the rules the
    question lists (a playbook's); a red flag one of them means (RULE_TOPICS) is cited as that
    rule, so the answer picks from the list the way the rulebook's own pairs do."""
    names = ordered(categories)
    findings = []
    for name in names:
        if CATEGORIES[name].red_flag:
            same = [f for f in listed if name in RULE_TOPICS.get(f.rule_id, ())]
            findings.append(same[0] if same else CATEGORIES[name].finding())
    findings = list({f.rule_id: f for f in findings}.values())  # a rule may mean two categories
    findings.sort(key=lambda f: SEVERITIES.index(f.severity))
    note = CATEGORIES[names[0]].note if len(names) == 1 else "No type here is a red flag by itself."
    audit = Audit(
        overall_risk(findings),
        findings,
        note="" if findings else note,
        clause_type="; ".join(names),
    )
    return render_audit(audit)


def finding_topics(audit: Audit | None) -> set[str]:
    """The categories an answer's findings raise: by rule id (ours and the rulebook's), else by an
    exact title of ours. Never by the Why or Fix text."""
    if audit is None:
        return set()
    topics: set[str] = set()
    for f in audit.findings:
        topics |= RULE_TOPICS.get(f.rule_id, frozenset())
        if f.title.casefold() in TITLE_TOPICS:
            topics.add(TITLE_TOPICS[f.title.casefold()])
    return topics


def type_topics(audit: Audit | None) -> set[str]:
    """The categories named on the answer's `Clause type:` line (exact names, case aside)."""
    if audit is None or not audit.clause_type:
        return set()
    parts = re.split(r"\s*[;,]\s*(?=[A-Z])|\s*;\s*", audit.clause_type)
    return {_BY_FOLDED[p.casefold()] for p in parts if p.casefold() in _BY_FOLDED}


def describe() -> str:
    """The table as JSON, for the dataset card and reports."""
    return json.dumps({n: vars(c) for n, c in CATEGORIES.items()}, indent=1)
