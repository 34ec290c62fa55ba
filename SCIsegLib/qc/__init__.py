"""The static QC report of ``sciseg run``: PNG images per scan (:mod:`images`, written by the workers) and
``qc/index.html`` with its entries (:mod:`report`), reviewed with the keyboard in any browser, from disk."""
