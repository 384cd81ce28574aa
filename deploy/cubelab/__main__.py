from cubelab.cli import main

main()
