"""``sciseg review``: the rater web app on trame-slicer (case list, Slicer views and effects, versioned export).

Files: ``paths`` (case ids and containment in the BIDS root), ``cases`` (the case list with statuses),
``auth`` (bind address and token rules), ``session`` (one open case in a Slicer scene: load, measure,
export; no UI), ``app`` (the trame UI, which only binds widgets to those calls), ``launcher`` (the
front's decisions: session ids, cap, idle rule), ``front`` (one address, one worker process per browser
tab, proxied), ``worker`` (one session's process serving ``app``).
"""
