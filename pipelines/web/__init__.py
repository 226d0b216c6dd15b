"""Web edits, the paper's third IEIW source: crawled "photoshop request" posts and their edits.

A source adapter lists posts (request text, original image, candidate edits); the crawler downloads
them safely and politely (per-host limits that hold for the whole build) into a content-addressed
cache on the build's store, with each URL's outcome beside it, and the lead records what became of
each post in its SQLite crawl state; the pairing stage keeps the edits that show the same scene as the
original.
"""
