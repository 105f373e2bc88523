"""Count the calls of module-level functions (to show that a code path really ran)."""


def count_calls(monkeypatch, module, *names) -> dict:
    """Wrap ``module.<name>`` for each name; returns a dict name -> calls so far (a name
    appears once it has been called)."""
    calls = {}
    for name in names:
        real = getattr(module, name)

        def counted(*args, _name=name, _real=real, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return calls
