"""Views of a search's results: its scores by split (`scores`), the terminal tables (`progress`), the plot
(`plot`) and the model card of an export (`model_card`). `evosearch.api` is their notebook face."""
