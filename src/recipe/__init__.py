from recipe.errors import RecipeError  # placeholder, replaced below
