from services.forge.server import main

main()
