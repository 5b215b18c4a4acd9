"""Known edits that turn a clause that passes a rule into one that fails it.

The label of an edited clause is known by construction: the edit is one a reviewer would flag
(the liability cap removed, liability made unlimited, a silent auto-renewal added, termination or
indemnity made one-sided, governing law dropped, payment or notice terms stretched...), and every
edit is kept only when the rule's own regex check passes on the original and fails on the result.

Three edit families, chosen by the rule's check kind:
- `requires_any`: remove the sentences that carry the required language (the cap, the governing law);
- `forbids_any` / `forbids_unless`: insert a red-flag sentence from DEFECT_SENTENCES and, for
  `forbids_unless`, remove the sentences that hold the saving language (the "mutual" part);
- `max_value`: stretch the number the check measures (30 days -> 90 days).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from legalbuild.curation.rulebook import Rule, normalize_text

# edit name -> red-flag sentences it inserts (each a plausible contract sentence)
DEFECT_SENTENCES: dict[str, tuple[str, ...]] = {
    "make_liability_unlimited": (
        "Notwithstanding anything to the contrary, the Customer's liability under this Agreement shall be unlimited.",
        "The limitations of liability in this Section shall not apply to claims arising from data or privacy breaches, for which the Processor's liability is uncapped.",
    ),
    "add_silent_auto_renewal": (
        "This Agreement shall automatically renew for successive one-year terms at the then-current fees.",
        "The subscription will auto-renew at the end of each term, and the renewal fees are charged to the payment method on file.",
    ),
    "one_sided_termination": (
        "Licensor may terminate this Agreement at any time, without cause or for any reason, upon thirty (30) days' notice.",
        "We reserve the right to terminate or suspend your account at any time in our sole discretion.",
        "Vendor may terminate this Agreement for convenience upon thirty (30) days' written notice to Reseller.",
        "Customer may terminate this Agreement for convenience at any time without cause.",
    ),
    "one_sided_indemnity": (
        "Customer shall defend, indemnify and hold harmless the Provider and its affiliates from any and all claims, losses and expenses arising out of this Agreement.",
        "Reseller shall defend and indemnify Vendor against all infringement and IP claims relating to the Products.",
        "Provider shall indemnify Customer against any and all claims, losses and damages of any kind arising out of the Services.",
        "Licensor shall indemnify Licensee against all claims, losses and liabilities of any kind relating to the Software.",
    ),
    "stretch_notice_or_payment_terms": (
        "Either party may terminate this Agreement by giving ninety (90) days' prior written notice.",
        "The Receiving Party's obligations survive for 10 years after the termination of this Agreement.",
        "Invoices are payable within one hundred twenty (120) days of receipt.",
    ),
    "unilateral_changes": (
        "Licensor may modify these terms at any time without notice, and continued use constitutes acceptance of the modified terms.",
        "Vendor may change the terms of this Agreement by posting an updated version to its website.",
        "We may update this privacy policy at any time without notice to you.",
        "Licensor may modify the permitted uses of the Data at any time.",
    ),
    "broad_ip_assignment": (
        "All deliverables shall be deemed work made for hire, and Provider hereby assigns all intellectual property rights in them to Customer.",
        "All improvements to the Software made by Licensee shall vest in Licensee, and any derivative works shall be owned by Licensee.",
        "Licensee may sublicense and redistribute the Software to any third party.",
    ),
    "add_non_compete": (
        "The Receiving Party shall not compete with the Disclosing Party during the term and for two (2) years after termination.",
        "Distributor agrees to a non-compete for two (2) years following termination or expiration of this Agreement.",
    ),
    "add_data_exploitation": (
        "Provider may sell personal information collected through the Service and share data with advertisers and data brokers.",
        "Vendor may use Customer Data to train its machine learning models and to improve the Service.",
        "We share your personal information with advertisers and marketing partners.",
        "You grant us a perpetual, irrevocable license to use, copy and modify your content.",
        "The Service may collect biometric identifiers such as facial geometry.",
    ),
    "add_mandatory_arbitration": (
        "Any dispute shall be resolved exclusively by binding arbitration, and you waive any right to participate in a class action.",
    ),
    "weaken_confidentiality": (
        "Nothing in this Agreement restricts the Receiving Party from using residual knowledge retained in its unaided memory.",
        "Only information marked confidential at the time of disclosure constitutes Confidential Information.",
        "The Disclosing Party grants the Receiving Party a license to use the Confidential Information for any purpose.",
        "The Receiving Party may disclose Confidential Information to its affiliates and representatives.",
        "The obligations of confidentiality survive for one year after disclosure.",
        "The Disclosing Party shall be entitled to injunctive relief without proof of irreparable harm.",
    ),
    "add_vendor_controls": (
        "Licensor may audit Licensee's usage and deployment of the Software at any time, and has the right to audit Licensee's books and records.",
        "Licensee shall pay true-up fees for any over-deployment at Licensor's then-current list prices.",
        "Licensor may discontinue the Software or support at any time.",
        "Licensee shall maintain a minimum of 100 user licenses throughout the term.",
        "Support fees are mandatory for all licenses and are required for the entire term.",
        "Supplier reserves the right to increase prices at any time.",
        "Payment in advance is required for all orders.",
        "Upon termination, Licensee shall delete all derived data and any models trained on the Data.",
        "Processor shall notify Controller of any personal data breach within 24 hours of discovery.",
        "Processor shall delete all personal data within seven (7) days of termination.",
        "Developer may disable the website or withhold deliverables until all disputed fees are paid.",
        "Change requests will be billed hourly at Developer's then-current rates.",
    ),
}

REMOVAL_NAMES = {
    "limitation_of_liability": "remove_liability_cap",
    "governing_law": "drop_governing_law",
    "termination": "remove_termination_terms",
    "confidentiality": "remove_confidentiality_terms",
    "warranty": "remove_warranty_terms",
    "payment": "remove_payment_terms",
    "data_protection": "remove_data_protection_terms",
}
NUMBER_WORDS = {
    10: "ten",
    60: "sixty",
    90: "ninety",
    120: "one hundred twenty",
    180: "one hundred eighty",
}
EDIT_NAMES = (
    *DEFECT_SENTENCES,
    *sorted(set(REMOVAL_NAMES.values())),
    "remove_required_language",
    "stretch_number",
)

_NUMBER_WORD = re.compile(
    r"\b((?:one hundred )?(?:ten|fifteen|twenty|thirty|forty|forty-five|fifty|sixty|seventy|eighty|ninety)"
    r"(?:[- ](?:one|two|three|four|five|six|seven|eight|nine))?|five|seven|two|three|four|six) \($",
    re.I,
)
_SENTENCE_END = re.compile(r"(?<=[.;])\s+(?=[A-Z(\"“])")


@dataclass(frozen=True)
class Defect:
    rule_id: str
    edit: str  # one of EDIT_NAMES
    original: str
    edited: str
    description: str  # what the edit did, in words (for the card and explain answers)


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(normalize_text(text)) if s]


def inject_defect(text: str, rule: Rule, rng: random.Random) -> Defect | None:
    """A known edit of `text` that makes `rule` fire, verified by the rule's regex; None if none does."""
    if rule.violated(text):
        return None  # the clause already fails the rule: nothing to construct
    if rule.check.kind == "requires_any":
        candidates = [_remove_required(text, rule)]
    elif rule.check.kind == "max_value":
        candidates = [_stretch_number(text, rule), *_insertions(text, rule, rng)]
    else:
        candidates = _insertions(text, rule, rng)
    for candidate in candidates:
        if candidate is not None and rule.violated(candidate[0]):
            edited, edit, description = candidate
            return Defect(rule.id, edit, normalize_text(text), edited, description)
    return None


def _remove_required(text: str, rule: Rule) -> tuple[str, str, str] | None:
    parts = sentences(text)
    kept = [s for s in parts if not any(p.search(s) for p in rule.check.patterns)]
    if (
        not kept
        or len(kept) == len(parts)
        or len(" ".join(kept)) < 0.35 * len(normalize_text(text))
    ):
        return None  # nothing to remove, or removing it leaves too little of the clause
    name = REMOVAL_NAMES.get(rule.clause_type, "remove_required_language")
    removed = len(parts) - len(kept)
    return (
        " ".join(kept),
        name,
        f"removed {removed} sentence(s) holding the language `{rule.id}` requires",
    )


def _insertions(text: str, rule: Rule, rng: random.Random) -> list[tuple[str, str, str]]:
    """Every library sentence that the rule forbids, inserted at a seeded position."""
    out = []
    options = [(name, s) for name, group in DEFECT_SENTENCES.items() for s in group]
    rng.shuffle(options)
    for name, sentence in options:
        if not rule.violated(sentence) and rule.check.kind != "forbids_unless":
            continue
        if rule.check.kind == "forbids_unless" and not any(
            p.search(sentence) for p in rule.check.patterns
        ):
            continue
        parts = sentences(text)
        if (
            rule.check.kind == "forbids_unless"
        ):  # drop the saving language too ("mutual", carve-outs)
            parts = [s for s in parts if not any(u.search(s) for u in rule.check.unless)]
            if not parts or len(" ".join(parts)) < 0.35 * len(normalize_text(text)):
                continue
            if any(u.search(sentence) for u in rule.check.unless):
                continue
        # at the end, or after a full sentence (never inside a ";"-separated list)
        stops = [i + 1 for i, part in enumerate(parts[:-1]) if part.endswith(".")]
        at = rng.choice([len(parts), len(parts), *stops[:2]]) if parts else 0
        edited = " ".join([*parts[:at], sentence, *parts[at:]])
        out.append((edited, name, f'inserted: "{sentence}"'))
    return out


def _stretch_number(text: str, rule: Rule) -> tuple[str, str, str] | None:
    norm = normalize_text(text)
    limit = rule.check.max or 0
    new_value = next((v for v in sorted(NUMBER_WORDS) if v > limit), int(limit) * 3 + 1)
    for pattern in rule.check.patterns:
        for m in pattern.finditer(norm):
            try:
                value = float(m.group(rule.check.group))
            except (IndexError, ValueError, TypeError):
                continue
            if value > limit:
                return None
            start, end = m.span(rule.check.group)
            digits = str(new_value)
            if len(digits) > end - start + 1:
                continue
            before = norm[:start]
            word = _NUMBER_WORD.search(before)  # "thirty (30)" -> "ninety (90)"
            if word and new_value in NUMBER_WORDS:
                before = before[: word.start(1)] + NUMBER_WORDS[new_value] + " ("
            edited = before + digits + norm[end:]
            return edited, "stretch_number", f"changed {m.group(rule.check.group)} to {digits}"
    return None
