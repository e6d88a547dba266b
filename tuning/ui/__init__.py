"""The dashboard's tabs, one module each. Every handler is a plain function that tests call
without a browser; each module's `build(ctx)` lays out its tab and wires its handlers.
app.py is the map of the page: it builds the tabs and wires what crosses between them."""
