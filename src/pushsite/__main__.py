from pushsite.cli import main

main()
