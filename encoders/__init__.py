"""Image, language and audio towers with their preprocessing."""
