"""Schedules: cron-timed jobs, each due tick made into exactly one job by any worker host."""
