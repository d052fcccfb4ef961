"""What loadertop adds to training frameworks; each module imports its framework, and only it does."""
