"""Registry cases (see cases.py) for the scalar transforms: name -> factory(features) -> Case."""

CASES: dict = {}
