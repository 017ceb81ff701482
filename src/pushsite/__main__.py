from pushsite.launch import main

main()
