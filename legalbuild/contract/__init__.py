"""Audit whole contracts: read a PDF, DOCX, Markdown or text file (`document`), cut it into
clauses with curation's splitter keeping where each one is (`split`), ask the served model about
every clause concurrently (`client`), and write the findings as a commented DOCX, an HTML page,
Markdown or JSON (`writers`, `html`, `docx_out`)."""
