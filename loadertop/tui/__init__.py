"""The Textual monitor: draws what ``loadertop.core`` publishes and sends it commands."""
