"""The read model: what any store answers about servers, as typed values, and how those values
are turned into the API's JSON. Both stores (the aggregator's memory and Redis) implement
:class:`~servertrack.readmodel.model.ReadModel`; :mod:`.render` is the one renderer."""
