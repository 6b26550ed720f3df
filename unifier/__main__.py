from unifier.cli import main

main()
