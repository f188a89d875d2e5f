"""Webhooks, one feature: which URLs a job may name and where a delivery may connect (rules),
the delivery queue in Redis (store), the deliverer process (deliverer) and one POST (send).
May import: the shared top-level modules and remoteci.store.
"""
