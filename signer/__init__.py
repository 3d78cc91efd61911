"""Paywarden signing service."""
