"""Web edits, the paper's third IEIW source: crawled "photoshop request" posts and their edits.

A source adapter lists posts (request text, original image, candidate edits); the crawler downloads
them safely and politely into a content-addressed cache, remembering every outcome in a SQLite
state file; the pairing stage keeps the edits that show the same scene as the original.
"""
