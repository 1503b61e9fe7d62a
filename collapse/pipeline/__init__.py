"""One generation of one lineage, as resumable stages (train, sample, evaluate, commit), and the
study's shared inputs (tokenizer, real pools). Imports `collapse.engines` and `collapse.core`.
"""
