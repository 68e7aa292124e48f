"""`evosearch dashboard`: a read-only web app over the store (a live Pareto front, candidates, workers).

`stores` opens the stores it shows (read-only), `liveness` holds the one rule that calls a running job's
driver dead, `recipe_picture` turns a recipe into the numbers a picture needs, `payloads` builds the JSON of
every view from the store, and `app` serves those as JSON endpoints and the pages that read them.
"""
