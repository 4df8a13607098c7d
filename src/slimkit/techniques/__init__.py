"""Model -> model transforms, one family per folder. Importing this package registers them."""
