"""`legalbuild review`: a web page where a reviewer uploads a contract, watches it audited clause by
clause by the recipe's served model, accepts (after editing) or rejects each finding, and
downloads the reviewed DOCX (comments and tracked changes), the HTML report and the JSON record.
uploads (limits, sanitised names, hostile files), store (reviews on disk), auditing (the
background audit, `legalbuild audit`'s machinery), decisions, downloads, pages (HTML), app
(FastAPI routes and guards), launch (the command's library function), static/ (CSS, JS).
Nothing here is imported by `--help`: FastAPI and uvicorn load when the page starts."""
