"""Schedules: steps, routes and collectives of a placed model, and the timeline /
performance model that prices them."""
