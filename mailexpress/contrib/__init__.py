"""Glue for the places Python already sends mail: Django (`mailexpress.contrib.django`)
and the logging module (`mailexpress.contrib.logging`)."""
