"""Request and response bodies, shared by the API routers and the services behind them."""
