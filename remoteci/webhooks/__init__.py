"""Webhooks, one feature: which URLs a job may name and where a delivery may connect (rules),
the delivery queue in Redis (store), the deliverer process (deliverer) and one POST (send).
May import: the shared top-level modules, remoteci.store, and remoteci.pipelines.objects (the
pipeline object a pipeline's webhook sends; it imports nothing of ours).
"""
