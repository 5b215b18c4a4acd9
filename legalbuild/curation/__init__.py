"""Curation: contracts + red-flag rulebooks -> verified, balanced audit pairs.

    corpora.py   documents from a user folder or the packaged corpora (licensedcode, nda_review)
    clauses.py   split a document into clauses and type them
    rulebook.py  load and validate YAML playbooks; evaluate their regex checks
    defects.py   known edits that make a passing clause fail a rule (verified by the regex)
    pairs.py     generate audit/defect/fix/explain/missing pairs and pick a balanced selection
    card.py      the dataset card (sources, licences, counts, lengths)
The stage itself is legalbuild/stages/curate.py.
"""
