"""Adapters that plug imgmatch into other tools (crawlers, pipelines)."""
